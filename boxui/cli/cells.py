"""`boxui run` (a command in a throwaway machine) and `boxui cells` (what ran).

`run` goes through the daemon's API like every command that acts: the daemon owns the
cell, so a CLI killed mid-way leaves no machine behind. Its exit code is the command's;
a cell that fails before or after its command exits 1 with one line saying where.
`cells` only reads the event log (no lock, no daemon), as `ls` and `events` do.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from boxui.cli.params import name_arg, template_ref

if TYPE_CHECKING:
    from backend.state.cell_projection import CellView


def _input(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
           ) -> list[dict[str, str]]:
    """HOST_PATH:GUEST_PATH, split at the last ':' before a '/' (the guest's is absolute,
    the host's may hold colons)."""
    items = []
    for value in values:
        at = value.rfind(":/")
        if at <= 0:
            raise click.BadParameter(f"{value!r}: use HOST_PATH:/GUEST/PATH", ctx, param)
        host = os.path.abspath(value[:at])
        if not os.path.isfile(host):
            raise click.BadParameter(f"{value[:at]}: no such file", ctx, param)
        items.append({"host_path": host, "guest_path": value[at + 1:]})
    return items


def _export(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
            ) -> list[dict[str, str]]:
    """GUEST_PATH[:HOST_DIR], the host dir by default the current one."""
    items = []
    for value in values:
        guest, _, host = value.partition(":")
        if not guest.startswith("/"):
            raise click.BadParameter(f"{value!r}: use /GUEST/PATH[:HOST_DIR]", ctx, param)
        host_dir = os.path.abspath(host or ".")
        if not os.path.isdir(host_dir):
            raise click.BadParameter(f"{host or '.'}: no such directory", ctx, param)
        items.append({"guest_path": guest, "host_dir": host_dir})
    return items


def _env(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
         ) -> dict[str, str]:
    env = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not eq or not key.isidentifier():
            raise click.BadParameter(f"{value!r}: use KEY=VALUE", ctx, param)
        env[key] = val
    return env


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--template", "template", metavar="ID[:ROLE]", callback=template_ref,
              help="Restore the machine from a template's snapshot (a warm start).")
@click.option("--image", callback=name_arg, help="Cold-boot an OS image (see `boxui image "
              "ls`) [default: boxui's busybox guest].")
@click.option("--name", callback=name_arg, help="The cell's (and its machine's) name "
              "[default: cell-<short id>].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Seconds the command may run; past them it fails (exit 124).")
@click.option("--env", "env", multiple=True, metavar="K=V", callback=_env)
@click.option("--input", "inputs", multiple=True, metavar="HOST_PATH:GUEST_PATH",
              callback=_input, help="A file copied in before the command (repeatable).")
@click.option("--export", "exports", multiple=True, metavar="GUEST_PATH[:HOST_DIR]",
              callback=_export, help="A file copied out after it, with its size and "
              "SHA-256 logged (repeatable; default dir: the current one).")
@click.option("--keep", is_flag=True, help="Keep the machine when the cell ends.")
@click.argument("command", nargs=-1, required=True)
def run_cmd(template: str | None, image: str | None, name: str | None,
            timeout: float | None, env: dict[str, str], inputs: list[dict[str, str]],
            exports: list[dict[str, str]], keep: bool, command: tuple[str, ...]) -> None:
    """Run CMD in a fresh machine, then destroy it: boxui run -- CMD ARGS..."""
    if template is not None and image is not None:
        raise click.UsageError("--template and --image do not go together")
    from boxui.daemon.cell_stream import CellInterrupted, run_cell
    from boxui.daemon.spawn import ensure_daemon

    body: dict[str, object] = {
        "argv": list(command), "name": name, "template": template, "image": image,
        "timeout": timeout, "env": env, "inputs": inputs, "exports": exports, "keep": keep}
    chatty = sys.stderr.isatty()
    with ensure_daemon() as client:
        try:
            cell = run_cell(client, body, _write,
                            lambda message: click.echo(f"· {message}", err=True)
                            if chatty else None)
        except CellInterrupted as exc:
            click.echo(f"boxui: {exc}", err=True)
            sys.exit(130)
    sys.exit(_exit_code(cell))


def _write(stream: str, data: bytes) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.buffer.write(data)
    out.flush()


def _exit_code(cell: CellView) -> int:
    """The command's exit code; a cell that failed around it says why and exits 1."""
    from backend.cells.outcome import exit_status

    code, message = exit_status(cell)
    if message is not None:
        click.echo(f"boxui: {message}", err=True)
    return code


@click.command("cells")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cells_cmd(as_json: bool) -> None:
    """List cells (`boxui run`), oldest first: stage, outcome, exit code, artifacts."""
    from backend.state.cell_projection import CellProjection
    from backend.state.event_log import read_log
    from backend.state.state_dir import open_state_dir
    from boxui.cli.output import emit_json, table

    cells = CellProjection.replay(read_log(open_state_dir().event_log).events).cells()
    if as_json:
        emit_json([c.model_dump(mode="json") for c in cells])
        return
    if not cells:
        click.echo("no cells yet (boxui run -- CMD runs one)")
        return
    click.echo(table(["NAME", "OUTCOME", "EXIT", "STAGE", "STARTED", "COMMAND", "REASON"],
                     [_row(c) for c in cells]))


def _row(cell: CellView) -> list[str]:
    import shlex

    command = shlex.join(cell.argv)
    return [cell.name, cell.outcome, "-" if cell.exit_code is None else str(cell.exit_code),
            cell.stage.value, cell.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            command if len(command) <= 40 else command[:39] + "…", cell.reason or ""]
