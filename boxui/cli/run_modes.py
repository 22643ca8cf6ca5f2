"""CLI commands that run boxui itself in the foreground: the daemon and the demo app.

The engine and the app are imported inside the commands: every `boxui` invocation
imports this module, `boxui ls` must not pay for them, and a second `boxui daemon` must
lose the lock race before it loads the engine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from boxui.cli import daemon_unit
from boxui.cli.dispatch import run


@click.group("daemon", invoke_without_command=True)
@click.pass_context
def daemon_cmd(ctx: click.Context) -> None:
    """Run the supervisor in the foreground (VMs keep running when it stops)."""
    if ctx.invoked_subcommand is not None:
        return
    from backend.state.state_dir import open_state_dir
    from backend.state.supervisor_lock import SupervisorLock

    lock = SupervisorLock(open_state_dir().lock_file)
    lock.acquire()
    from boxui.daemon.serve import run_daemon

    with contextlib.suppress(KeyboardInterrupt):
        run(run_daemon(lock=lock))


@click.command("demo")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Demo state dir (default: next to the normal one, named *-demo); "
              "wiped at start if made by an earlier demo.")
def demo_cmd(home: Path | None) -> None:
    """Open the app over sample machines that show every state (no VMs involved)."""
    from boxui.tui.demo import run_demo

    run_demo(home)


daemon_cmd.add_command(daemon_unit.install_cmd)
daemon_cmd.add_command(daemon_unit.uninstall_cmd)

COMMANDS = [daemon_cmd, demo_cmd]
