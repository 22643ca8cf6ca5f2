"""`boxui daemon`: the supervisor headless, serving the control API.

It re-adopts running machines, watches them, applies restart policies, keeps services at
their desired replicas, and serves the API on the state dir's unix socket, so the CLI
(and scripts) act through it while it runs. SIGTERM or Ctrl-C shut it down cleanly: the
API stops taking requests, event streams end, and every VM keeps running, to be
re-adopted by the next supervisor. Given an idle timeout (the background daemon the CLI
starts), it also shuts down once it has had nothing to do for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from backend.api.listen_socket import listen_on_api_socket
from backend.state.engine import Engine
from backend.state.event_bus import Missed, Subscription
from backend.state.lifecycle import ACTIVE_STATES
from backend.state.process_liveness import start_time_of
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import SupervisorLock
from backend.supervision.autostart import autostart_machines
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.orphan_gc import report_orphans
from backend.supervision.supervisor import Supervisor
from boxui.daemon.idle import is_idle, wait_until_idle
from boxui.daemon.start_lock import try_start_lock
from boxui.daemon.supervised import make_supervisor

if TYPE_CHECKING:
    from backend.api.context import ApiContext
    from backend.supervision.machine_exec import ExecRunner

log = logging.getLogger("boxui.daemon")


async def run_daemon(
    home: Path | None = None,
    *,
    supervisor_factory: Callable[[Engine], Supervisor] = make_supervisor,
    exec_runner: ExecRunner | None = None,
    lock: SupervisorLock | None = None,
    idle_timeout: float = 0,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """`lock`: the state dir's lock, if the caller already took it. `idle_timeout`:
    seconds of idleness after which to exit (0: never). `on_listening`: called once the
    API socket listens and the state dir is open (how the CLI that started this daemon is
    told it is ready): from then on a client's request waits in the socket's backlog
    until recovery is done and the API serves it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s boxui: %(message)s")
    dirs = await asyncio.to_thread(open_state_dir, home)
    if lock is None:
        lock = SupervisorLock(dirs.lock_file)
        lock.acquire()
    try:
        sock = await asyncio.to_thread(listen_on_api_socket, dirs)
    except BaseException:
        lock.release()
        raise
    try:
        engine = await Engine.open(dirs.root, lock=lock)
        try:
            if on_listening is not None:  # after the state dir proved readable
                on_listening()
            await _supervise(engine, sock, supervisor_factory, exec_runner, idle_timeout)
        finally:
            await _close(engine, sock)
    finally:
        sock.close()  # when Engine.open failed; a second close does nothing


async def _close(engine: Engine, sock: socket.socket) -> None:
    """Remove the socket while the lock still keeps any other daemon from binding it,
    then let go of the lock."""
    sock.close()
    with contextlib.suppress(OSError):
        engine.dirs.api_socket.unlink()
    await engine.close()


async def _supervise(engine: Engine, sock: socket.socket,
                     supervisor_factory: Callable[[Engine], Supervisor],
                     exec_runner: ExecRunner | None, idle_timeout: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    leaving: list[int] = []  # the start lock, held from an idle exit until the process ends
    try:
        for note in engine.startup_notes:
            log.warning(note)
        subscription = engine.subscribe()
        supervisor = supervisor_factory(engine)
        async with supervisor.running(recover=recover_machines, sample_health=True):
            _log_recovered(supervisor)
            ctx = _api_context(supervisor, exec_runner)
            supervisor.spawn(_log_events(subscription), "log-events")
            await report_orphans(supervisor)  # after recovery: what it did not adopt
            await autostart_machines(supervisor)  # after recovery; each boots in its task
            await ctx.services.start()
            await ctx.pools.start()  # after recovery: members are re-adopted as machines are
            for note in await ctx.cells.recover():  # after recovery: machines are known
                log.warning(note)
            await _serve(ctx, sock, stop, idle_timeout, leaving)
            log.info("shutting down; machines keep running")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for fd in leaving:  # only now may a CLI start the next daemon
            os.close(fd)


def _log_recovered(supervisor: Supervisor) -> None:
    projection = supervisor.engine.projection
    names = projection.names()
    active = sum(projection.state_of(n) in ACTIVE_STATES for n in names)
    started = start_time_of(os.getpid())
    since = f"{time.time() - started:.3f} s" if started is not None else "?"
    log.info("recovered %d machines (%d running, %d re-adopted) %s after the daemon "
             "started (%.3f s of CPU)", len(names), active, len(supervisor.handles), since,
             time.process_time())


def _api_context(supervisor: Supervisor, exec_runner: ExecRunner | None) -> ApiContext:
    """The API's context, its modules imported only now: the web stack, services and SSH
    (about half a second) load after machines are re-adopted, not before, while clients
    already wait in the socket's backlog."""
    from backend.api.context import ApiContext
    from backend.services.manager import ServiceManager
    from backend.supervision.command_recovery import recover_commands
    from backend.supervision.machine_exec import MachineExec
    from backend.supervision.provisioning import start_provisioning

    machine_exec = MachineExec(supervisor.engine, exec_runner)
    supervisor.liveness.runner = machine_exec.runner  # probes share its connections
    supervisor.spawn(machine_exec.keep_connections(), "ssh-connections")
    supervisor.spawn(recover_commands(machine_exec), "command-recovery")
    return ApiContext(supervisor, machine_exec, ServiceManager(supervisor, machine_exec),
                      provisioner=start_provisioning(supervisor, machine_exec.pool))


async def _serve(ctx: ApiContext, sock: socket.socket, stop: asyncio.Event,
                 idle_timeout: float, leaving: list[int]) -> None:
    """Serve the API until `stop` is set (or, with an idle timeout, until idle)."""
    from backend.api.server import serve_api  # see _api_context

    listening = asyncio.Event()
    api = asyncio.create_task(serve_api(ctx, stop, listening, sock), name="api")
    await asyncio.wait({api, asyncio.ensure_future(listening.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    if not api.done():
        held = ", ".join(f"{n} (pid {h.pid})" for n, h in ctx.supervisor.handles.items())
        log.info("supervising %s; %s", ctx.engine.dirs.root, held or "no running machines")
        if idle_timeout > 0:
            ctx.supervisor.spawn(_exit_when_idle(ctx, idle_timeout, stop, leaving), "idle")
    await api  # until SIGTERM, idleness, or the server fails


async def _exit_when_idle(ctx: ApiContext, idle_timeout: float, stop: asyncio.Event,
                          leaving: list[int]) -> None:
    while True:
        await wait_until_idle(ctx, idle_timeout)
        fd = try_start_lock(ctx.engine.dirs)
        if fd is None:  # a CLI is starting a daemon or waiting to: not idle after all
            continue
        if is_idle(ctx):
            leaving.append(fd)
            log.info("idle for %g s with no machine running, no service and no client; "
                     "exiting", idle_timeout)
            stop.set()
            return
        os.close(fd)


async def _log_events(subscription: Subscription) -> None:
    async for item in subscription:
        if isinstance(item, Missed):
            log.warning("log fell behind: %d events not shown", item.count)
            continue
        data = item.data
        if "from" in data or "to" in data:
            log.info("%s %s -> %s %s", item.subject, data.get("from"), data.get("to"),
                     item.message)
        else:
            log.info("%s %s %s", item.subject, item.type.rsplit(".", 1)[-1], item.message)
