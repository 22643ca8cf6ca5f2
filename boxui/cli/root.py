"""The `boxui` command line: the click group of every command, and its error handling.

`boxui.cli.main` is the entry point; it reaches this module for every command but the
fast path of `exec`. Every error a user can cause is a `BoxuiError` and is printed as one
line; only a bug prints more, and only with BOXUI_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import click

from backend.errors import BoxuiError
from boxui.cli import daemon_cmds, doctor, gc, listing, machine_access, machines, run_modes
from boxui.cli.disks import disk_group
from boxui.cli.images import image_group
from boxui.cli.provision_cmd import provision_cmd
from boxui.cli.services import service_group
from boxui.cli.templates import template_group


@click.group(invoke_without_command=True)
@click.version_option(package_name="boxui")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """boxui: a terminal manager for local microVMs."""
    if ctx.invoked_subcommand is None:
        from boxui.tui.run import run_app  # the app loads Textual: only when it opens

        run_app()


for _command in (*listing.COMMANDS, *machines.COMMANDS, *machine_access.COMMANDS,
                 *run_modes.COMMANDS, *daemon_cmds.COMMANDS, doctor.doctor_cmd, gc.gc_cmd,
                 disk_group, image_group, service_group, template_group, provision_cmd):
    cli.add_command(_command)


def main() -> None:
    """Run the command line in `sys.argv` through click."""
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
