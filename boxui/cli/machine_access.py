"""CLI commands that reach into a running machine: logs, ssh, ssh-config, exec.

SSH, the daemon client and asyncio are imported inside the commands: every `boxui`
invocation imports this module, and `boxui ls` must not pay for them.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from boxui.cli.dispatch import run
from boxui.cli.params import machine_name


@click.command("logs")
@machine_name
@click.option("--follow", "-f", is_flag=True, help="Keep printing new console output.")
def logs_cmd(name: str, follow: bool) -> None:
    """Print a machine's serial console log."""
    from boxui.cli.follow_console import print_console

    with contextlib.suppress(KeyboardInterrupt):
        run(print_console(name, follow=follow))


@click.command("ssh")
@machine_name
@click.argument("command", nargs=-1)
def ssh_cmd(name: str, command: tuple[str, ...]) -> None:
    """Open an interactive shell in a machine (with the system ssh)."""
    from boxui.ssh_commands import ssh_exec_argv

    argv = ssh_exec_argv(name, list(command) or None)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@click.command("ssh-config")
@machine_name
def ssh_config_cmd(name: str) -> None:
    """Print a Host block for ~/.ssh/config."""
    from boxui.ssh_commands import ssh_config_text

    click.echo(ssh_config_text(name), nl=False)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@machine_name
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(name: str, command: tuple[str, ...]) -> None:
    """Run a command in a machine over SSH; exits with its exit code."""
    from boxui.ssh_commands import exec_through_daemon, run_exec

    code = exec_through_daemon(name, list(command))
    if code is None:  # no daemon serves the state dir
        code = run(run_exec(name, list(command)))
    sys.exit(code)


COMMANDS = [logs_cmd, ssh_cmd, ssh_config_cmd, exec_cmd]
