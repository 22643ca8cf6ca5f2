"""Make the event log and the machine directories agree when a supervisor starts.

The log is the source of truth for lifecycle state, but files can change behind its back:
boxui may have died between writing a log record and `state.json`, a user may have copied
a machine directory in or removed one, or a file may have become unreadable. Each case is
settled by an explicit event, so the log keeps telling the whole story.

Whether a machine recorded as running still has a live hypervisor is a different question,
answered by crash recovery once a driver is available.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb, persisted_state
from backend.state.names import is_valid_name
from backend.state.runtime_record import RuntimeRecord

if TYPE_CHECKING:
    from backend.state.engine import Engine


async def reconcile_disk_with_log(engine: Engine, *,
                                  deleting: AbstractSet[str] = frozenset()) -> None:
    """`deleting` names machines whose directory a delete had moved to trash when
    boxui died: their delete is finished here, not reported as a removal by hand."""
    store = engine.store
    projection = engine.projection
    on_disk = await asyncio.to_thread(store.load_all, supervised=True)
    seen: set[str] = set()
    for machine in on_disk:
        seen.add(machine.name)
        if not is_valid_name(machine.name):
            engine.startup_notes.append(f"ignoring {machine.name!r}: {machine.reason}")
            continue
        known = projection.state_of(machine.name)
        if machine.broken:
            if known is not InstanceState.BROKEN:
                if known is None:
                    await engine.transition(machine.name, Verb.CREATED,
                                            message="found on disk")
                await engine.transition(machine.name, Verb.BROKEN,
                                        message="machine files are invalid",
                                        reason=machine.reason)
            continue
        if known is None:
            await engine.transition(machine.name, Verb.CREATED,
                                    message="found on disk; registered")
            continue
        if known is InstanceState.CREATING:
            # boxui died between logging `creating` and `created`; the files are whole
            await engine.transition(machine.name, Verb.CREATED,
                                    message="creation finished at startup")
            continue
        if known is InstanceState.BROKEN:
            await engine.transition(machine.name, Verb.REPAIRED,
                                    message="machine files are valid again")
            continue
        record = machine.record
        if record is not None and record.state is not known:
            # the log is ahead of state.json: bring the record up to date
            await asyncio.to_thread(store.update_record, machine.name, _set_state(known))
    for name in projection.names():
        if name in seen:
            continue
        state = projection.state_of(name)
        finishing = name in deleting
        why = ("its delete was cut short by a crash" if finishing
               else "machine directory removed outside boxui")
        if state in ACTIVE_STATES:
            await engine.transition(name, Verb.CRASHED, message="machine directory vanished",
                                    reason=why)
        await engine.transition(name, Verb.DELETED,
                                message="deletion finished at startup" if finishing else why)


def _set_state(state: InstanceState) -> Callable[[RuntimeRecord], None]:
    def apply(record: RuntimeRecord) -> None:
        record.state = state
        record.persisted = persisted_state(state, ever_started=record.ever_started)

    return apply
