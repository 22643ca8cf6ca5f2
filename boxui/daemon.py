"""`boxui daemon`: the supervisor in the foreground, for scripts and for testing recovery.

It re-adopts running machines, watches them and applies restart policies. SIGTERM or
Ctrl-C shut it down cleanly and leave every VM running, to be re-adopted next time.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from backend.engine import Engine
from backend.supervisor_lock import SupervisorLock
from boxui.supervised import make_supervisor

log = logging.getLogger("boxui.daemon")


async def run_daemon(lock: SupervisorLock | None = None) -> None:
    """`lock`: the state dir's lock, if the caller already took it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s boxui: %(message)s")
    engine = await Engine.open(lock=lock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for note in engine.startup_notes:
            log.warning(note)
        subscription = engine.subscribe()
        supervisor = make_supervisor(engine)
        async with supervisor.running(sample_health=True):
            supervisor.spawn(_log_events(subscription), "log-events")
            held = ", ".join(f"{n} (pid {h.pid})" for n, h in supervisor.handles.items())
            log.info("supervising %s; %s", engine.dirs.root, held or "no running machines")
            await stop.wait()
            log.info("shutting down; machines keep running")
    finally:
        await engine.close()


async def _log_events(subscription: object) -> None:
    from backend.event_bus import Missed, Subscription

    assert isinstance(subscription, Subscription)
    async for item in subscription:
        if isinstance(item, Missed):
            log.warning("log fell behind: %d events not shown", item.count)
            continue
        data = item.data
        log.info("%s %s -> %s %s", item.subject, data.get("from"), data.get("to"),
                 item.message)
