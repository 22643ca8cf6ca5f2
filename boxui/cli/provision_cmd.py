"""`boxui provision NAME`: run a running machine's provision scripts again.

The daemon runs them (over its kept SSH connection) and records each run; this only
asks it and reports. Their output is in `boxui logs NAME --provision` and the events.
"""

from __future__ import annotations

import click

from boxui.cli.dispatch import call
from boxui.cli.params import json_flag, machine_name


@click.command("provision")
@machine_name
@json_flag
def provision_cmd(name: str, as_json: bool) -> None:
    """Run a machine's provision scripts again, in order, as root (it must be running)."""
    record = call("POST", f"/v1/machines/{name}/provision")
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(record)
        return
    scripts = record.get("scripts", [])
    click.echo(f"{name}: provisioned ({len(scripts)} script{'s' * (len(scripts) != 1)}, "
               "all exited 0)")
