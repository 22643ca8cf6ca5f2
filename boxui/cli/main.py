"""The `boxui` command line.

Every error a user can cause is a `BoxuiError` and is printed as one line; only a bug
prints more, and only with BOXUI_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from backend.errors import BoxuiError
from backend.state.names import validate_name


def _state_dir(create: bool = True) -> Any:
    from backend.state.state_dir import open_state_dir

    return open_state_dir(create=create)


def _name_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_name(value)
    except BoxuiError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.group(invoke_without_command=True)
@click.version_option(package_name="boxui")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """boxui: a terminal manager for local microVMs."""
    if ctx.invoked_subcommand is None:
        from boxui.tui.run import run_app

        run_app()


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(as_json: bool) -> None:
    """List machines (reads the state dir without taking the lock)."""
    from backend.state.listing_cache import list_views
    from backend.state.supervisor_lock import lock_holder
    from boxui.cli.output import MACHINE_HEADERS, emit_json, machine_row, table

    dirs = _state_dir()
    supervised = lock_holder(dirs.lock_file) is not None
    views = list_views(dirs, supervised=supervised)
    if as_json:
        emit_json(views)
        return
    if not views:
        click.echo(f"no machines yet (state dir: {dirs.root})")
        return
    click.echo(table(MACHINE_HEADERS, [machine_row(v) for v in views]))
    if any(v["needs_recovery"] and v["state"] == "stopped" for v in views):
        click.echo("* was running when boxui stopped; confirmed when boxui starts again")


@cli.command("info")
@click.argument("name", callback=_name_arg)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(name: str, as_json: bool) -> None:
    """Show one machine's spec and runtime record."""
    from backend.state.machine_store import MachineStore, machine_view
    from backend.state.supervisor_lock import lock_holder
    from boxui.cli.output import emit_json, info_lines

    dirs = _state_dir()
    holder = lock_holder(dirs.lock_file)
    machine = MachineStore(dirs).load(name, supervised=holder is not None)
    if as_json:
        from backend.templates.restore_plan import shared_state_note

        emit_json(machine_view(machine) | {"supervisor_pid": holder,
                                           "shared_state": shared_state_note(
                                               machine.spec, machine.record)})
        return
    click.echo("\n".join(info_lines(machine, holder)))


@cli.command("events")
@click.argument("name", required=False, callback=_name_arg)
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


from boxui.cli.machines import register as _register_machine_commands  # noqa: E402

_register_machine_commands(cli, _name_arg)

from boxui.cli.services import register as _register_service_commands  # noqa: E402

_register_service_commands(cli)

from boxui.cli.templates import template_group  # noqa: E402

cli.add_command(template_group)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = f"boxui {exc.ctx.command_path.split(' ', 1)[-1]}" if exc.ctx else "boxui"
        if exc.ctx and exc.ctx.command_path == "boxui":
            where = "boxui"
        click.echo(f"{where}: {exc.format_message()} (see --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"boxui: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except BoxuiError as exc:
        click.echo(f"boxui: {exc}", err=True)
        sys.exit(1)
    except BaseExceptionGroup as group:  # raised through a supervisor's task group
        leaf = _first_leaf(group)
        if isinstance(leaf, BoxuiError):
            click.echo(f"boxui: {leaf}", err=True)
            sys.exit(1)
        if isinstance(leaf, KeyboardInterrupt):
            sys.exit(130)
        if os.environ.get("BOXUI_DEBUG"):
            raise
        click.echo(f"boxui: internal error: {type(leaf).__name__}: {leaf} "
                   "(BOXUI_DEBUG=1 shows details)", err=True)
        sys.exit(70)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless asked for detail
        if os.environ.get("BOXUI_DEBUG"):
            raise
        click.echo(
            f"boxui: internal error: {type(exc).__name__}: {exc} (BOXUI_DEBUG=1 shows details)",
            err=True,
        )
        sys.exit(70)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
