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
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from backend.api.context import ApiContext
from backend.api.server import serve_api
from backend.services.manager import ServiceManager
from backend.state.engine import Engine
from backend.state.event_bus import Missed, Subscription
from backend.state.supervisor_lock import SupervisorLock
from backend.supervision.autostart import autostart_machines
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.machine_exec import ExecRunner, MachineExec
from backend.supervision.supervisor import Supervisor
from boxui.daemon.idle import is_idle, wait_until_idle
from boxui.daemon.start_lock import try_start_lock
from boxui.daemon.supervised import make_supervisor

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
    API takes requests (how the CLI that started this daemon is told it is ready)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s boxui: %(message)s")
    engine = await Engine.open(home, lock=lock)
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
            machine_exec = MachineExec(engine, exec_runner)
            supervisor.liveness.runner = machine_exec.runner  # probes share its connections
            supervisor.spawn(machine_exec.keep_connections(), "ssh-connections")
            ctx = ApiContext(supervisor, machine_exec, ServiceManager(supervisor, machine_exec))
            supervisor.spawn(_log_events(subscription), "log-events")
            await autostart_machines(supervisor)  # after recovery; each boots in its task
            await ctx.services.start()
            await _serve(ctx, stop, on_listening, idle_timeout, leaving)
            log.info("shutting down; machines keep running")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await engine.close()
        for fd in leaving:  # only now may a CLI start the next daemon
            os.close(fd)


async def _serve(ctx: ApiContext, stop: asyncio.Event, on_listening: Callable[[], None] | None,
                 idle_timeout: float, leaving: list[int]) -> None:
    """Serve the API until `stop` is set (or, with an idle timeout, until idle)."""
    listening = asyncio.Event()
    api = asyncio.create_task(serve_api(ctx, stop, listening), name="api")
    await asyncio.wait({api, asyncio.ensure_future(listening.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    if not api.done():
        held = ", ".join(f"{n} (pid {h.pid})" for n, h in ctx.supervisor.handles.items())
        log.info("supervising %s; %s", ctx.engine.dirs.root, held or "no running machines")
        if on_listening is not None:
            on_listening()
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
