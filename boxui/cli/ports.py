"""`boxui port add|rm|ls`: a machine's port forwards.

`add` and `rm` go through the daemon, which holds the running hypervisor they change
(with no restart) and the machine's lock; `ls` only reads the state dir, so it works with
no daemon and never starts one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from boxui.cli.dispatch import call
from boxui.cli.params import json_flag, machine_name, port_mappings

if TYPE_CHECKING:
    from backend.state.port_mapping import PortMapping


def _describe(name: str, view: dict[str, Any]) -> str:
    guest = f"guest {view['guest']}/{view['protocol']}"
    if view.get("live_host") is not None:
        return f"{name}: 127.0.0.1:{view['live_host']} -> {guest}"
    if view.get("host") is not None:
        return f"{name}: 127.0.0.1:{view['host']} -> {guest} (from its next start)"
    return f"{name}: a free host port -> {guest} (picked at each start)"


@click.group("port")
def port_group() -> None:
    """Forward host ports (127.0.0.1) to a machine's guest ports, also while it runs."""


@port_group.command("add")
@machine_name
@click.argument("mappings", nargs=-1, required=True, metavar="[HOST:]GUEST[/udp]...",
                callback=port_mappings)
@json_flag
def add_cmd(name: str, mappings: list[PortMapping], as_json: bool) -> None:
    """Forward each mapping, at once if the machine runs (no restart) and at every start;
    without HOST a free host port is picked and shown. A host port in use is refused."""
    views = [call("POST", f"/v1/machines/{name}/ports", json=m.model_dump(mode="json"))
             for m in mappings]
    _show(name, views, as_json)


@port_group.command("rm")
@machine_name
@click.argument("mappings", nargs=-1, required=True, metavar="GUEST[/udp]...",
                callback=port_mappings)
@json_flag
def rm_cmd(name: str, mappings: list[PortMapping], as_json: bool) -> None:
    """Stop forwarding each guest port, at once and at later starts."""
    views = [call("DELETE", f"/v1/machines/{name}/ports/{m.guest}",
                  params={"protocol": m.protocol}) for m in mappings]
    if as_json:
        _show(name, views, as_json)
        return
    for view in views:
        guest = f"guest {view['guest']}/{view['protocol']}"
        if view.get("live_host") is not None:
            click.echo(f"{name}: removed 127.0.0.1:{view['live_host']} -> {guest}")
        else:
            click.echo(f"{name}: removed the forward of {guest}")


@port_group.command("ls")
@machine_name
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(name: str, as_json: bool) -> None:
    """List the machine's forwards and the host ports they hold now."""
    from backend.state.live_supervisor import live_supervisor
    from backend.state.machine_store import MachineStore
    from backend.state.port_forward_view import forward_views
    from backend.state.state_dir import open_state_dir

    dirs = open_state_dir()
    machine = MachineStore(dirs).load(name, supervised=live_supervisor(dirs.lock_file)
                                      is not None)
    views = [v.model_dump(mode="json") for v in forward_views(machine)]
    if not views and not as_json:
        click.echo(f"{name} forwards no ports but SSH (`boxui port add {name} GUEST`)")
        return
    _show(name, views, as_json)


def _show(name: str, views: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(views)
        return
    for view in views:
        click.echo(_describe(name, view))
