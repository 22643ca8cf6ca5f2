"""Orphaned hypervisors as the running supervisor sees them: reported when a daemon
starts, and killed by `boxui gc` (see `orphans` for what makes one an orphan)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from backend.state.lifecycle import InstanceState
from backend.supervision.orphans import (
    ORPHAN_FOUND_TYPE,
    ORPHAN_KILLED_TYPE,
    Orphan,
    PoolHolders,
    find_orphans,
    kill_process,
    orphan_event,
    scan,
)
from backend.supervision.supervisor import Supervisor

log = logging.getLogger("boxui.orphans")


async def list_orphans(supervisor: Supervisor) -> list[Orphan]:
    """Hypervisors of this state dir that no machine's current run holds, nor a warm
    pool (whose members' records say what it holds, as they do for the doctor)."""
    dirs = supervisor.engine.dirs
    found = await asyncio.to_thread(scan, dirs)
    pool = await asyncio.to_thread(PoolHolders.load, dirs, supervisor.engine.store)

    def owner(name: str) -> tuple[InstanceState | None, int | None]:
        handle = supervisor.handles.get(name)
        return (supervisor.engine.projection.state_of(name),
                handle.pid if handle is not None else None)

    return find_orphans(found, owner, pool)


async def report_orphans(supervisor: Supervisor) -> list[Orphan]:
    """Say (in the log and as an event each) which orphans a starting daemon found; it
    kills none by itself: `boxui gc` does, once a person has seen the list."""
    orphans = await list_orphans(supervisor)
    for orphan in orphans:
        message = (f"orphaned QEMU pid {orphan.process.pid} ({orphan.reason}); "
                   "`boxui gc` kills it")
        log.warning("%s", message)
        await supervisor.engine.record_event(orphan_event(ORPHAN_FOUND_TYPE, orphan, message))
    return orphans


async def collect_orphans(supervisor: Supervisor, *, dry_run: bool) -> list[dict[str, Any]]:
    """List the orphans and, unless `dry_run`, kill each (proven identity only); one
    entry per orphan with what was done."""
    done = []
    for orphan in await list_orphans(supervisor):
        if dry_run:
            done.append(orphan.as_json("would kill"))
            continue
        what = await kill_process(supervisor.engine.dirs, orphan.process)
        await supervisor.engine.record_event(orphan_event(
            ORPHAN_KILLED_TYPE, orphan,
            f"boxui gc: QEMU pid {orphan.process.pid} ({orphan.reason}): {what}"))
        done.append(orphan.as_json(what))
    return done
