"""`boxui ls`, `info` and `events`: commands that only read the state dir.

They take no lock, so they work while a daemon or the app supervises. Everything past
click is imported inside the commands: `boxui ls` is the command people run most, and
it must not pay for pydantic models, the engine or asyncio it does not use.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from boxui.cli.params import name_arg

if TYPE_CHECKING:
    from backend.state.machine_spec import MachineSpec
    from backend.state.state_dir import StateDir


def _state_dir() -> StateDir:
    from backend.state.state_dir import open_state_dir

    return open_state_dir()


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(as_json: bool) -> None:
    """List machines (reads the state dir without taking the lock)."""
    from backend.state.listing_cache import list_views
    from backend.state.live_supervisor import live_supervisor
    from boxui.cli.output import MACHINE_HEADERS, emit_json, machine_row, table

    dirs = _state_dir()
    holder = live_supervisor(dirs.lock_file)
    views = list_views(dirs, supervised=holder is not None)
    if as_json:
        emit_json(views)
        return
    if not views:
        click.echo(f"no machines yet (state dir: {dirs.root})")
        return
    click.echo(table(MACHINE_HEADERS, [machine_row(v) for v in views]))
    if any(v["needs_recovery"] and v["state"] == "stopped" for v in views):
        click.echo("* was running when boxui stopped; confirmed when boxui starts again")
    if holder is not None and any((v.get("record") or {}).get("persisted") == "running"
                                  for v in views):
        click.echo(f"running machines are supervised by boxui pid {holder}")


@click.command("info")
@click.argument("name", callback=name_arg)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(name: str, as_json: bool) -> None:
    """Show one machine's spec and runtime record."""
    from backend.state.live_supervisor import live_supervisor
    from backend.state.machine_store import MachineStore, machine_view
    from boxui.cli.output import emit_json, info_lines

    dirs = _state_dir()
    holder = live_supervisor(dirs.lock_file)
    machine = MachineStore(dirs).load(name, supervised=holder is not None)
    if as_json:
        from backend.templates.restore_plan import shared_state_note

        running = machine.record is not None and machine.record.persisted.value == "running"
        emit_json(machine_view(machine) | {"disk": _disk_json(dirs, machine.spec),
                                           "supervisor_pid": holder,
                                           "supervised_by": holder if running else None,
                                           "shared_state": shared_state_note(
                                               machine.spec, machine.record)})
        return
    click.echo("\n".join(info_lines(machine, holder) + _disk_lines(dirs, machine.spec)))


def _disk_json(dirs: StateDir, spec: MachineSpec | None) -> dict[str, object] | None:
    """A disk machine's disk as `qemu-img info` would size it (read from its header)."""
    if spec is None or spec.image is None:
        return None
    from backend.supervision.machine_disk import disk_usage

    usage = disk_usage(dirs.machine_dir(spec.name))
    return {"image": spec.image, "size": spec.disk,
            "usage": usage.as_json() if usage else None}


def _disk_lines(dirs: StateDir, spec: MachineSpec | None) -> list[str]:
    disk = _disk_json(dirs, spec)
    if disk is None:
        return []
    from backend.state.disk_size import format_size

    usage = disk["usage"]
    if not isinstance(usage, dict):
        return [f"{'disk usage:':<16}none yet (made at the first start)"]
    return [f"{'disk usage:':<16}{format_size(usage['virtual_bytes'])} virtual, "
            f"{format_size(usage['allocated_bytes'])} allocated ({usage['path']})"]


@click.command("events")
@click.argument("name", required=False, callback=name_arg)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One CloudEvent JSON object per line.")
@click.option("--last", "-n", type=click.IntRange(min=0), default=None,
              help="Only the last N events.")
def events_cmd(name: str | None, follow: bool, as_json: bool, last: int | None) -> None:
    """Print the event log (all machines, or NAME's)."""
    import asyncio

    from boxui.cli.follow_events import print_events

    dirs = _state_dir()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(print_events(dirs, name, follow=follow, as_json=as_json, last=last))


COMMANDS = [ls_cmd, info_cmd, events_cmd]
