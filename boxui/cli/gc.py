"""`boxui gc`: kill hypervisors of this state dir that no machine owns.

They are listed first (`--dry-run` lists only); the daemon kills each only when its
identity is proven (pid, start time, a command line naming its machine and this state
dir), so a process that merely reuses a recorded pid is never signalled.
"""

from __future__ import annotations

import click

from boxui.cli.dispatch import call
from boxui.cli.params import json_flag


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="List what would be killed; kill nothing.")
@json_flag
def gc_cmd(dry_run: bool, as_json: bool) -> None:
    """Kill orphaned QEMU processes (ones no machine of this state dir owns)."""
    found = call("GET", "/v1/orphans")
    if not as_json:
        if not found:
            click.echo("no orphaned QEMU processes")
            return
        for entry in found:
            click.echo(f"orphan: pid {entry['pid']} of {entry['machine']} ({entry['reason']})")
    done = found if dry_run or not found else \
        call("POST", "/v1/orphans/gc", params={"dry_run": False})
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(done)
        return
    for entry in done:
        click.echo(f"pid {entry['pid']} of {entry['machine']}: {entry['action']}")
