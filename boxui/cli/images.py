"""`boxui image ls|build|rm`: OS images machines boot from (and boxui's `default`).

Builds and removals go through the daemon (`ensure_daemon`), which owns the state dir:
a removal must see every machine that uses the image, and a build outlives nothing but
its client. `ls` reads the state dir itself when no daemon serves it (it only reads).
Heavy imports stay inside the commands: every `boxui` invocation imports this module.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from backend.errors import BoxuiError

if TYPE_CHECKING:
    from backend.api.image_models import ImageBuildLine


def _image_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from backend.state.names import is_valid_name

    if not is_valid_name(value):
        raise click.BadParameter(f"invalid image name {value!r}: use 1-63 characters of "
                                 "a-z, 0-9 and '-', not starting with '-'", ctx=ctx,
                                 param=param)
    return value


@click.group("image")
def image_group() -> None:
    """List, build and remove OS images (Debian recipes, and the default guest)."""


@image_group.command("ls")
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(as_json: bool) -> None:
    """List images: default, the built ones, and recipes not built yet."""
    from boxui.cli.output import emit_json, table

    entries = _catalog()
    if as_json:
        emit_json(entries)
        return
    rows = [[e["name"], e["kind"], "yes" if e["built"] else "no",
             _size(e.get("size_bytes")), e.get("kernel_version") or "-",
             str(e["packages"]) if e.get("packages") is not None else "-",
             (e.get("hash") or "-")[:12], ",".join(e.get("used_by") or []) or "-"]
            for e in entries]
    click.echo(table(["IMAGE", "KIND", "BUILT", "SIZE", "KERNEL", "PACKAGES", "HASH",
                      "USED BY"], rows))


def _catalog() -> list[dict[str, Any]]:
    from backend.state.state_dir import open_state_dir
    from boxui.daemon.client import find_daemon

    client = find_daemon()
    if client is not None:
        with client:
            answer = client.call("GET", "/v1/images")
        assert isinstance(answer, list)
        return answer
    from backend.images.catalog import catalog
    from backend.state.machine_store import MachineStore

    dirs = open_state_dir()
    return [e.model_dump(mode="json") for e in catalog(dirs, MachineStore(dirs).load_all())]


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.0f} MiB"


@image_group.command("build")
@click.argument("name", callback=_image_name)
@click.option("--json", "as_json", is_flag=True)
def build_cmd(name: str, as_json: bool) -> None:
    """Build image NAME from its recipe (a cache hit if nothing changed)."""
    from boxui.daemon.image_build import build_via_api
    from boxui.daemon.spawn import ensure_daemon

    _check_recipe(name)  # bad input must not start a daemon
    show = _Progress()
    with ensure_daemon() as client:
        try:
            result = build_via_api(client, name, show)
        finally:
            show.end()
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(result.model_dump(mode="json"))
        return
    image = result.image
    if result.cache_hit:
        click.echo(f"{name}: up to date (cache hit, {(image.hash or '')[:12]})")
    else:
        click.echo(f"{name}: built {(image.hash or '')[:12]}, {_size(image.size_bytes)}, "
                   f"kernel {image.kernel_version}")


def _check_recipe(name: str) -> None:
    if name == "default":
        return
    from backend.images.recipe import load_recipe
    from backend.state.state_dir import open_state_dir

    load_recipe(open_state_dir(), name)


class _Progress:
    """One line per step on stderr; counted steps rewrite their line on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.open_line = False

    def __call__(self, line: ImageBuildLine) -> None:
        text = f"image: {line.message}"
        if self.tty and line.done is not None:
            sys.stderr.write(f"\r\033[K{text}")
            self.open_line = True
        elif line.done is None or line.done in (1, line.total):
            self.end()
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.open_line:
            sys.stderr.write("\n")
            self.open_line = False


@image_group.command("rm")
@click.argument("name", callback=_image_name)
@click.option("--json", "as_json", is_flag=True)
def rm_cmd(name: str, as_json: bool) -> None:
    """Remove a built image (refused while a machine uses it)."""
    from boxui.daemon.spawn import ensure_daemon

    if name == "default":
        raise BoxuiError("boxui's default guest cannot be removed")
    with ensure_daemon() as client:
        removed = client.call("DELETE", f"/v1/images/{name}")
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(removed)
        return
    click.echo(f"removed image {name} ({_size(removed.get('size_bytes'))})")
