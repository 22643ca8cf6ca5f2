"""The `boxui` command line: the click group of every command, and its error handling.

`boxui.cli.main` is the entry point; it reaches this module for every command but the
fast path of `exec`. Every error a user can cause is a `BoxuiError` and is printed as one
line; only a bug prints more, and only with BOXUI_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from backend.errors import BoxuiError

#: every command, by the module that defines it: a command imports only its own module
#: (and what that needs), which keeps `boxui daemon` and every other command quick to start
COMMANDS: dict[str, tuple[str, str]] = {
    "ls": ("listing", "ls_cmd"), "info": ("listing", "info_cmd"),
    "events": ("listing", "events_cmd"),
    "create": ("machines", "create_cmd"), "start": ("machines", "start_cmd"),
    "stop": ("machines", "stop_cmd"), "restart": ("machines", "restart_cmd"),
    "rm": ("machines", "rm_cmd"),
    "logs": ("machine_access", "logs_cmd"), "ssh": ("machine_access", "ssh_cmd"),
    "ssh-config": ("machine_access", "ssh_config_cmd"),
    "exec": ("machine_access", "exec_cmd"), "cp": ("copy", "cp_cmd"),
    "commands": ("commands_cmd", "commands_cmd"),
    "provision": ("provision_cmd", "provision_cmd"),
    "demo": ("run_modes", "demo_cmd"), "daemon": ("daemon_cmds", "daemon_group"),
    "doctor": ("doctor", "doctor_cmd"), "gc": ("gc", "gc_cmd"),
    "disk": ("disks", "disk_group"), "image": ("images", "image_group"),
    "port": ("ports", "port_group"),
    "service": ("services", "service_group"), "template": ("templates", "template_group"),
    "run": ("cells", "run_cmd"), "cells": ("cells", "cells_cmd"),
    "pool": ("pools", "pool_group"),
    "host": ("hosts", "host_group"),
}
#: commands about this machine's boxui itself, which stay local whatever host is chosen
#: (and take no `--host`); every other command and subcommand takes `--host NAME` (else
#: BOXUI_HOST, else `host use`'s) and runs on that host as `host_routing` says
LOCAL_COMMANDS: dict[str, str] = {
    "host": "it edits this machine's list of hosts and which one commands act on",
    "demo": "it runs the app here, on a state dir of its own",
    #: a group's own callback is never routed: only the commands that run are
    "daemon (alone)": "it runs this machine's daemon in the foreground (`daemon status|"
                      "stop|install|uninstall` take --host; a remote starts its own daemon)",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs or is listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module = importlib.import_module(f"boxui.cli.{where[0]}")
        command = getattr(module, where[1])
        assert isinstance(command, click.Command)
        if cmd_name not in LOCAL_COMMANDS:
            for path, leaf in command_leaves(cmd_name, command):
                _take_host_option(leaf, path)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        global _command_args
        _command_args = list(args)
        return super().resolve_command(ctx, args)

    @property
    def all_commands(self) -> dict[str, click.Command]:
        """Every command, loaded (for tests and help that walk them all)."""
        ctx = click.Context(self)
        return {name: cmd for name in COMMANDS
                if (cmd := self.get_command(ctx, name)) is not None}


def command_leaves(path: str, command: click.Command) -> list[tuple[str, click.Command]]:
    """`command` and its subcommands (`port add`, ...) that run: the ones a host routes."""
    if not isinstance(command, click.Group):
        return [(path, command)]
    return [leaf for name, sub in sorted(command.commands.items())
            for leaf in command_leaves(f"{path} {name}", sub)]


#: the command line of the command being run (a remote host runs it as it is)
_command_args: list[str] = []


#: what `--host` said for the command being run
_given_host: str | None = None


def _choose_host(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    global _given_host
    from boxui.daemon.remote import choose_host

    _given_host = value
    choose_host(value)


def _another_host_may_be_chosen() -> bool:
    """False when the command surely acts locally; checked without creating the state
    dir, so bad input is still refused with nothing made on disk."""
    from backend.hosts.selection import CURRENT_FILE, HOST_ENV
    from backend.state.state_dir import default_home

    return (_given_host is not None or bool(os.environ.get(HOST_ENV))
            or (default_home() / CURRENT_FILE).exists())


def _take_host_option(command: click.Command, path: str) -> None:
    """Give `command` its `--host` (once). On another host it runs as that host's kind
    has it (`host_routing.on_host`): never here, unless it is about this machine."""
    if any(p.name == "host" for p in command.params):
        return
    command.params.append(click.Option(
        ["--host"], metavar="NAME", expose_value=False, is_eager=True,
        callback=_choose_host, help="Act on this host (default: BOXUI_HOST, else "
        "`boxui host use`'s, else local)."))
    callback = command.callback
    if callback is None:
        return

    def hosted(*args: object, **kwargs: object) -> object:
        if not _another_host_may_be_chosen():
            return callback(*args, **kwargs)
        from boxui.daemon.remote import selected_remote

        remote = selected_remote()
        if remote is None:
            return callback(*args, **kwargs)
        from boxui.cli.host_routing import on_host

        return on_host(remote, path, kwargs, args=_command_args,
                       here=lambda: callback(*args, **kwargs))

    command.callback = hosted


@click.group(cls=LazyGroup, invoke_without_command=True)
@click.version_option(package_name="boxui")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """boxui: a terminal manager for local microVMs."""
    if ctx.invoked_subcommand is None:
        from boxui.tui.run import run_app  # the app loads Textual: only when it opens

        run_app()


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
