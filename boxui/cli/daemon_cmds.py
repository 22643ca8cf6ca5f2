"""`boxui daemon`: run the supervisor (foreground, or in the background as the CLI starts
it), and `daemon status` / `daemon stop`.

A group that runs the daemon when given no subcommand, so that more subcommands can join
it. The engine is imported only when the daemon runs: every `boxui` invocation imports
this module, and a second daemon must lose the lock race before it loads the engine.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from boxui.cli import daemon_unit

if TYPE_CHECKING:
    from backend.state.state_dir import StateDir
    from backend.state.supervisor_lock import SupervisorLock

#: seconds of idleness before a background daemon exits
DEFAULT_IDLE_TIMEOUT = 300.0
#: how long `daemon stop` waits for the daemon to exit after SIGTERM
STOP_TIMEOUT = 30.0


@click.group("daemon", invoke_without_command=True)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State dir [default: $BOXUI_HOME or ~/.local/share/boxui].")
@click.option("--background", is_flag=True,
              help="Log to <state dir>/logs/daemon.log (rotated) instead of stderr, and "
              "exit when idle (see --idle-timeout). The CLI starts it so when needed.")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=None,
              help="Exit after this many seconds with no machine running, no service and "
              f"no client; 0: never [default: {DEFAULT_IDLE_TIMEOUT:g} with --background, "
              "else 0].")
@click.option("--ready-fd", type=click.IntRange(min=3), default=None, hidden=True,
              help="Write a line to this fd once the API listens (for the CLI).")
@click.option("--lock-fd", type=click.IntRange(min=3), default=None, hidden=True,
              help="The state dir's lock, held and handed over on this fd (by the app).")
@click.pass_context
def daemon_group(ctx: click.Context, home: Path | None, background: bool,
                 idle_timeout: float | None, ready_fd: int | None,
                 lock_fd: int | None) -> None:
    """Run the supervisor in the foreground (VMs keep running when it stops)."""
    ctx.obj = home
    if ctx.invoked_subcommand is not None:
        return
    if ready_fd is not None:
        os.set_inheritable(ready_fd, False)  # machines it starts must not hold the pipe
    from backend.state.state_dir import open_state_dir
    from backend.state.supervisor_lock import SupervisorLock
    from boxui.daemon.start_lock import try_start_lock

    dirs = open_state_dir(home)
    # Until its API listens, a daemon holds the start lock (one the CLI starts: that CLI
    # does), so a CLI arriving meanwhile waits for it instead of finding the state dir
    # locked with no socket. Only tried: a rival start must still lose at once.
    starting = None if ready_fd is not None or lock_fd is not None else try_start_lock(dirs)
    if lock_fd is not None:  # the app hands supervision over: its lock becomes ours
        lock = SupervisorLock.inherit(dirs.lock_file, lock_fd)
    else:
        lock = SupervisorLock(dirs.lock_file)
        lock.acquire()
    if background:
        from boxui.daemon.log_file import log_to_file
        from boxui.daemon.spawn import daemon_log_path

        os.chdir("/")  # hold no directory busy for as long as it runs
        os.umask(0o077)  # whatever its starter's umask, what it writes is private
        log_to_file(daemon_log_path(dirs))
    if idle_timeout is None:
        idle_timeout = DEFAULT_IDLE_TIMEOUT if background else 0.0
    _run(dirs, lock, idle_timeout, ready_fd, starting)


def _run(dirs: StateDir, lock: SupervisorLock, idle_timeout: float, ready_fd: int | None,
         starting: int | None) -> None:
    """Run the daemon; once its API listens, tell the CLI on `ready_fd` and let go of
    the start lock (`starting`)."""
    import asyncio

    from boxui.daemon.serve import run_daemon

    held = [fd for fd in (ready_fd, starting) if fd is not None]

    def ready() -> None:
        if ready_fd is not None:
            with contextlib.suppress(OSError):  # the CLI gave up waiting: serve anyway
                os.write(ready_fd, b"ready\n")
        while held:
            os.close(held.pop())

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_daemon(dirs.root, lock=lock, idle_timeout=idle_timeout,
                                   on_listening=ready))
    finally:
        while held:
            os.close(held.pop())


@daemon_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status_cmd(home: Path | None, as_json: bool) -> None:
    """Show the daemon serving the state dir: pid, uptime, socket, machines by state.

    Exits 1 when none runs."""
    from backend.state.state_dir import open_state_dir
    from boxui.cli.output import emit_json
    from boxui.daemon.client import find_daemon

    dirs = open_state_dir(home)
    client = find_daemon(dirs.root)
    if client is None:
        if as_json:
            emit_json({"running": False, "state_dir": str(dirs.root)})
        else:
            click.echo(f"no boxui daemon serves {dirs.root}")
        raise SystemExit(1)
    with client:
        health = client.call("GET", "/v1/health")
    if as_json:
        emit_json({"running": True, "socket": str(dirs.api_socket)} | health)
        return
    states = ", ".join(f"{n} {s}" for s, n in health["by_state"].items()) or "none"
    click.echo("\n".join([
        f"pid:            {health['pid']}",
        f"uptime:         {_duration(health['uptime_seconds'])}",
        f"state dir:      {health['state_dir']}",
        f"socket:         {dirs.api_socket}",
        f"machines:       {health['machines']} ({states})",
        f"services:       {health['services']}",
    ]))


@daemon_group.command("stop")
@click.pass_obj
def stop_cmd(home: Path | None) -> None:
    """Stop the daemon serving the state dir (SIGTERM); machines keep running."""
    from backend.state.state_dir import open_state_dir
    from boxui.daemon.control import stop_daemon

    dirs = open_state_dir(home)
    pid = stop_daemon(dirs, STOP_TIMEOUT)
    if pid is None:
        click.echo(f"no boxui daemon serves {dirs.root}")
    else:
        click.echo(f"stopped boxui daemon, pid {pid}; machines keep running")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else \
        f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


daemon_group.add_command(daemon_unit.install_cmd)
daemon_group.add_command(daemon_unit.uninstall_cmd)

COMMANDS = [daemon_group]
