"""`boxui daemon`: the supervisor headless in the foreground, serving the control API.

It re-adopts running machines, watches them, applies restart policies, keeps services at
their desired replicas, and serves the API on the state dir's unix socket, so the CLI
(and scripts) act through it while it runs. Logs go to stderr. SIGTERM or Ctrl-C shut it
down cleanly: the API stops taking requests, event streams end, and every VM keeps
running, to be re-adopted by the next supervisor.
"""

from __future__ import annotations

import asyncio
import logging
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
from boxui.daemon.supervised import make_supervisor

log = logging.getLogger("boxui.daemon")


async def run_daemon(
    home: Path | None = None,
    *,
    supervisor_factory: Callable[[Engine], Supervisor] = make_supervisor,
    exec_runner: ExecRunner | None = None,
    lock: SupervisorLock | None = None,
) -> None:
    """`lock`: the state dir's lock, if the caller already took it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s boxui: %(message)s")
    engine = await Engine.open(home, lock=lock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for note in engine.startup_notes:
            log.warning(note)
        subscription = engine.subscribe()
        supervisor = supervisor_factory(engine)
        async with supervisor.running(recover=recover_machines, sample_health=True):
            machine_exec = MachineExec(engine, exec_runner)
            supervisor.spawn(machine_exec.keep_connections(), "ssh-connections")
            ctx = ApiContext(supervisor, machine_exec, ServiceManager(supervisor, machine_exec))
            supervisor.spawn(_log_events(subscription), "log-events")
            await autostart_machines(supervisor)  # after recovery; each boots in its task
            await ctx.services.start()
            listening = asyncio.Event()
            api = asyncio.create_task(serve_api(ctx, stop, listening), name="api")
            await asyncio.wait({api, asyncio.ensure_future(listening.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if not api.done():
                held = ", ".join(f"{n} (pid {h.pid})" for n, h in supervisor.handles.items())
                log.info("supervising %s; %s", engine.dirs.root,
                         held or "no running machines")
            await api  # until SIGTERM (or the server fails)
            log.info("shutting down; machines keep running")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await engine.close()


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
