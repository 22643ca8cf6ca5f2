"""`boxui disk show|resize`: a disk machine's own disk, through the daemon's API.

Resizing goes through the daemon because the daemon owns the machines: it holds the
machine's lock while the disk grows, so no start can begin halfway through.
"""

from __future__ import annotations

from typing import Any

import click

from boxui.cli.dispatch import call
from boxui.cli.params import disk_size, json_flag, machine_name


def _print(name: str, view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(view)
        return
    from backend.state.disk_size import format_size

    usage = view.get("usage")
    click.echo(f"{name}: image {view['image']}, disk {view.get('size') or 'image size'}")
    if usage:
        click.echo(f"  {usage['path']}: {format_size(usage['virtual_bytes'])} virtual, "
                   f"{format_size(usage['allocated_bytes'])} allocated")
    else:
        click.echo("  not made yet (the machine's first start makes it)")


@click.group("disk")
def disk_group() -> None:
    """A machine's own disk (machines made from an OS image)."""


@disk_group.command("show")
@machine_name
@json_flag
def show_cmd(name: str, as_json: bool) -> None:
    """Show the machine's image and its disk's sizes."""
    _print(name, call("GET", f"/v1/machines/{name}/disk"), as_json)


@disk_group.command("resize")
@machine_name
@click.argument("size", callback=disk_size)
@json_flag
def resize_cmd(name: str, size: str, as_json: bool) -> None:
    """Grow a stopped machine's disk to SIZE (e.g. 40G); the guest grows its filesystem
    at its next boot. Shrinking is refused."""
    _print(name, call("POST", f"/v1/machines/{name}/disk/resize", json={"size": size}),
           as_json)
