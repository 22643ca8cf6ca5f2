"""`boxui daemon install` and `boxui daemon uninstall`: the systemd unit that starts the
daemon at boot or login.

Subcommands of the `daemon` group, kept here so the group registers them in one line
each. The state dir module is imported inside `install`: every `boxui` invocation
imports this module.
"""

from __future__ import annotations

import os

import click

from boxui.daemon.systemd_unit import (
    boxui_command,
    enable_hints,
    install_unit,
    render_unit,
    uninstall_unit,
    unit_target,
)

_KIND = click.option(
    "--system/--user", "system", default=None,
    help="A system unit in /etc/systemd/system (the default as root) or a user unit in "
    "~/.config/systemd/user (the default otherwise).")


@click.command("install")
@_KIND
@click.option("--force", is_flag=True, help="Replace an existing unit that differs.")
@click.option("--print", "print_only", is_flag=True, help="Show the unit; write nothing.")
@click.pass_context
def install_cmd(ctx: click.Context, system: bool | None, force: bool,
                print_only: bool) -> None:
    """Write a systemd unit that runs `boxui daemon` at boot (or login)."""
    from backend.state.state_dir import default_home, open_state_dir

    target = unit_target(_is_system(system))
    home = default_home().absolute()
    text = render_unit(boxui_command(), home, system=target.system,
                       idle_flag=_daemon_has_idle_timeout(ctx))
    if print_only:
        click.echo(text, nl=False)
        return
    open_state_dir(home)  # made (0700) and vetted now, not when the unit first runs
    outcome = install_unit(target, text, force=force)
    click.echo(f"{outcome} {target.path}" if outcome != "unchanged"
               else f"{target.path} is installed already")
    for line in enable_hints(target):
        click.echo(line)


@click.command("uninstall")
@_KIND
def uninstall_cmd(system: bool | None) -> None:
    """Remove the systemd unit `boxui daemon install` wrote."""
    target = unit_target(_is_system(system))
    if uninstall_unit(target):
        click.echo(f"removed {target.path}; now run: {target.systemctl} daemon-reload")
    else:
        click.echo(f"no unit to remove at {target.path}")


def _is_system(system: bool | None) -> bool:
    return os.geteuid() == 0 if system is None else system


def _daemon_has_idle_timeout(ctx: click.Context) -> bool:
    """Whether `boxui daemon` takes `--idle-timeout`: the unit passes 0 (never idle out)
    when it does, and nothing a daemon without it would refuse."""
    parent = ctx.parent.command if ctx.parent is not None else None
    return parent is not None and any(p.name == "idle_timeout" for p in parent.params)


COMMANDS = [install_cmd, uninstall_cmd]
