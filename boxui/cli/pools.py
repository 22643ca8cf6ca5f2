"""`boxui pool set|ls`: each template variant's warm pool.

`set` goes through the daemon, which keeps the pools full; `ls` asks a daemon serving
the state dir (it knows what is warming and why a pool is short) and otherwise reads the
members' records on disk, so it never starts one.
"""

from __future__ import annotations

from typing import Any

import click

from boxui.cli.dispatch import call
from boxui.cli.params import json_flag, template_ref


@click.group("pool")
def pool_group() -> None:
    """Warm pools: machines of a template variant kept restored and idle, claimed by
    `create --template`, `run --template` and service scale-up."""


@pool_group.command("set")
@click.argument("ref", metavar="ID[:ROLE]", callback=template_ref)
@click.argument("size", type=click.IntRange(0, None), metavar="N")
@json_flag
def set_cmd(ref: str, size: int, as_json: bool) -> None:
    """Keep N members of the variant warm (0 empties its pool); this wins over the
    template's `pool = N`."""
    view = call("PUT", f"/v1/pools/{ref}", json={"size": size})
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(view)
        return
    if size == 0:
        click.echo(f"pool {view['template']}: emptied (its members are stopped)")
        return
    click.echo(f"pool {view['template']}: {size} member{'s' * (size != 1)} "
               f"({min(view['ready'], size)} ready now; the rest warm in the background)")


@pool_group.command("ls")
@json_flag
def ls_cmd(as_json: bool) -> None:
    """Each variant's pool: its size, members ready and warming, and their memory."""
    report = _report()
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(report)
        return
    if not report["pools"]:
        click.echo("no warm pools (`boxui pool set ID:ROLE N`, or `pool = N` in a template)")
        return
    from boxui.cli.output import table

    rows = [[p["template"], str(p["size"]), p["source"], str(p["ready"]), str(p["warming"]),
             f"{p['memory_mib']} MiB", p["problem"] or ""] for p in report["pools"]]
    click.echo(table(["VARIANT", "SIZE", "FROM", "READY", "WARMING", "MEMORY", "PROBLEM"],
                     rows))
    click.echo(f"memory: {report['memory_used_mib']} of {report['memory_budget_mib']} MiB "
               "budget ([pools] memory_budget_mib in daemon.toml)")


def _report() -> dict[str, Any]:
    from boxui.daemon.client import find_daemon

    client = find_daemon()
    if client is not None:
        with client:
            answer: dict[str, Any] = client.call("GET", "/v1/pools")
            return answer
    from backend.pools.views import disk_report
    from backend.state.state_dir import open_state_dir

    return disk_report(open_state_dir()).model_dump(mode="json")
