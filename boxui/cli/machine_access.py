"""CLI commands that reach into a running machine: logs, ssh, ssh-config, exec.

SSH, the daemon client and asyncio are imported inside the commands: every `boxui`
invocation imports this module, and `boxui ls` must not pay for them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys

import click

from boxui.cli.dispatch import run
from boxui.cli.params import machine_name, name_arg


@click.command("logs")
@machine_name
@click.option("--follow", "-f", is_flag=True, help="Keep printing new console output.")
@click.option("--provision", is_flag=True,
              help="The output of its provision scripts instead of the console.")
def logs_cmd(name: str, follow: bool, provision: bool) -> None:
    """Print a machine's serial console log."""
    from boxui.cli.follow_console import print_console

    with contextlib.suppress(KeyboardInterrupt):
        run(print_console(name, follow=follow, provision=provision))


@click.command("ssh")
@machine_name
@click.argument("command", nargs=-1)
def ssh_cmd(name: str, command: tuple[str, ...]) -> None:
    """Open an interactive shell in a machine, or on a host NAME (with the system ssh)."""
    from boxui.cli.hosts import stored_ssh_host
    from boxui.ssh_commands import ssh_exec_argv

    stored_ssh_host(name, command)  # a host of that name, and no such machine: ssh there

    argv = ssh_exec_argv(name, list(command) or None)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@click.command("ssh-config")
@click.argument("name", required=False, callback=name_arg)
@click.option("--install", is_flag=True,
              help="Write a Host entry per machine (`ssh NAME.boxui`) into a file boxui "
              "keeps current, and include it from ~/.ssh/config (once).")
def ssh_config_cmd(name: str | None, install: bool) -> None:
    """Print a Host block for ~/.ssh/config, or (--install) include every machine."""
    if install == (name is not None):
        raise click.UsageError("give a machine NAME, or --install for every machine")
    if install:
        from boxui.ssh_commands import install_ssh_config

        click.echo(install_ssh_config())
        return
    from boxui.ssh_commands import ssh_config_text

    assert name is not None
    click.echo(ssh_config_text(name), nl=False)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@machine_name
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=24 * 3600),
              default=None, metavar="S",
              help="Deadline: after S seconds the command is killed in the guest.")
@click.option("--idempotent", is_flag=True,
              help="Safe to run again if the daemon dies while it runs.")
@click.option("--attempts", type=click.IntRange(1, 10), default=None, metavar="N",
              help="With --idempotent: at most N attempts in all (default 3).")
def exec_cmd(name: str, command: tuple[str, ...], timeout: float | None, idempotent: bool,
             attempts: int | None) -> None:
    """Run a command in a machine over SSH; exits with its exit code. Every command is
    recorded (`boxui commands`); options go before NAME or `--`."""
    from boxui.ssh_commands import exec_through_daemon

    if attempts is not None and not idempotent:
        raise click.UsageError("--attempts needs --idempotent")
    options: dict[str, object] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if idempotent:
        options |= {"idempotent": True, "max_attempts": attempts or 3}
    # the daemon runs it over the machine's kept SSH connection, as counted in-flight work
    # (scale-down waits for it); the stdlib request keeps this command's start-up small
    from boxui.daemon.remote import selected_remote

    remote = selected_remote() is not None  # a remote host: through its forwarded API
    code = None if remote else exec_through_daemon(name, list(command), options=options)
    if code is None:  # no daemon serves the state dir yet: start one, then ask it
        from boxui.cli.dispatch import call

        result = call("POST", f"/v1/machines/{name}/exec",
                      json={"argv": list(command), **options})
        sys.stdout.buffer.write(base64.b64decode(result["stdout_b64"]))
        sys.stdout.flush()
        sys.stderr.buffer.write(base64.b64decode(result["stderr_b64"]))
        sys.stderr.flush()
        code = int(result["exit_code"])
    sys.exit(code)


COMMANDS = [logs_cmd, ssh_cmd, ssh_config_cmd, exec_cmd]
