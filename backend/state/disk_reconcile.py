"""What must change so the event log and the machine directories agree at startup.

The log is the source of truth for lifecycle state, but files can change behind its back:
boxui may have died between writing a log record and `state.json`, a user may have copied
a machine directory in or removed one, or a file may have become unreadable. Each case is
settled by an explicit event, so the log keeps telling the whole story.

Deciding is kept apart from doing: `plan_reconciliation` only reads what it is given and
returns the steps in order, and the engine applies them through its one write path. So
every case can be tested without a state dir, and this module needs nothing of the engine.

Whether a machine recorded as running still has a live hypervisor is a different question,
answered by crash recovery once a driver is available.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb, persisted_state
from backend.state.machine_store import LoadedMachine
from backend.state.names import is_valid_name
from backend.state.projection import Projection
from backend.state.runtime_record import RuntimeRecord


@dataclass(frozen=True)
class LogStep:
    """A lifecycle event to record for one machine."""

    name: str
    verb: Verb
    message: str
    reason: str | None = None


@dataclass(frozen=True)
class RecordFix:
    """`state.json` is behind the log: its state must become what the log says."""

    name: str
    state: InstanceState

    def __call__(self, record: RuntimeRecord) -> None:
        record.state = self.state
        record.persisted = persisted_state(self.state, ever_started=record.ever_started)


@dataclass
class Reconciliation:
    """The changes to make, in order, and lines to show the user about what was skipped."""

    actions: list[LogStep | RecordFix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_reconciliation(on_disk: Iterable[LoadedMachine], projection: Projection, *,
                        deleting: AbstractSet[str] = frozenset()) -> Reconciliation:
    """`deleting` names machines whose directory a delete had moved to trash when
    boxui died: their delete is finished, not reported as a removal by hand."""
    plan = Reconciliation()
    seen: set[str] = set()
    for machine in on_disk:
        seen.add(machine.name)
        if not is_valid_name(machine.name):
            plan.notes.append(f"ignoring {machine.name!r}: {machine.reason}")
            continue
        plan.actions.extend(_settle_present(machine, projection.state_of(machine.name)))
    for name in projection.names():
        if name not in seen:
            plan.actions.extend(_settle_vanished(name, projection.state_of(name),
                                                 finishing=name in deleting))
    return plan


def _settle_present(machine: LoadedMachine, known: InstanceState | None
                    ) -> list[LogStep | RecordFix]:
    """A machine directory that exists, against what the log knows of it (`known`)."""
    name = machine.name
    if machine.broken:
        if known is InstanceState.BROKEN:
            return []
        found = [LogStep(name, Verb.CREATED, "found on disk")] if known is None else []
        return [*found, LogStep(name, Verb.BROKEN, "machine files are invalid",
                                reason=machine.reason)]
    if known is None:
        return [LogStep(name, Verb.CREATED, "found on disk; registered")]
    if known is InstanceState.CREATING:
        # boxui died between logging `creating` and `created`; the files are whole
        return [LogStep(name, Verb.CREATED, "creation finished at startup")]
    if known is InstanceState.BROKEN:
        return [LogStep(name, Verb.REPAIRED, "machine files are valid again")]
    record = machine.record
    if record is not None and record.state is not known:
        # the log is ahead of state.json: bring the record up to date
        return [RecordFix(name, known)]
    return []


def _settle_vanished(name: str, state: InstanceState | None, *, finishing: bool
                     ) -> list[LogStep | RecordFix]:
    """A machine the log knows whose directory is gone."""
    why = ("its delete was cut short by a crash" if finishing
           else "machine directory removed outside boxui")
    steps: list[LogStep | RecordFix] = []
    if state in ACTIVE_STATES:
        steps.append(LogStep(name, Verb.CRASHED, "machine directory vanished", reason=why))
    steps.append(LogStep(name, Verb.DELETED,
                         "deletion finished at startup" if finishing else why))
    return steps
