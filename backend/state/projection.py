"""The one canonical reducer: current machine state is derived from events, nowhere else.

Applying is idempotent by event id: a repeat is counted as ignored and changes nothing,
so an event delivered twice cannot move a machine twice. An illegal transition is
rejected with an error naming the machine, its state and the event, and rejection
leaves the projection exactly as it was. The live supervisor and a replay of the log
run this same code, which is why replaying the log rebuilds exactly the state the live
process had.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel

from backend.errors import IllegalTransitionError
from backend.state.events import CloudEvent, verb_of
from backend.state.lifecycle import (
    INTERRUPTED_STATES,
    STATES_WITH_REASON,
    TARGET,
    InstanceState,
    Verb,
    is_allowed,
    resume_state,
)


class MachineProjection(BaseModel):
    name: str
    state: InstanceState
    reason: str | None = None
    since: datetime
    last_event_id: str
    last_event_type: str
    events_applied: int = 0
    ever_started: bool = False
    #: while unresponsive or unhealthy: the state `recovered` returns it to
    resumes_to: InstanceState | None = None


class ProjectionSnapshot(BaseModel):
    machines: dict[str, MachineProjection]
    by_state: dict[str, int]
    applied: int
    ignored: int
    rejected: int


class Projection:
    def __init__(self) -> None:
        self._machines: dict[str, MachineProjection] = {}
        self._applied_ids: set[str] = set()
        self.applied = 0
        self.ignored = 0
        self.rejected = 0

    @classmethod
    def replay(cls, events: Iterable[CloudEvent]) -> Projection:
        """Rebuild from a log; a rejected record is counted, not fatal, so one bad event
        cannot hide every machine after it."""
        projection = cls()
        for event in events:
            with contextlib.suppress(IllegalTransitionError):
                projection.apply(event)
        return projection

    def state_of(self, name: str) -> InstanceState | None:
        machine = self._machines.get(name)
        return machine.state if machine else None

    def get(self, name: str) -> MachineProjection | None:
        machine = self._machines.get(name)
        return machine.model_copy() if machine else None

    def names(self) -> list[str]:
        return sorted(self._machines)

    def check(self, event: CloudEvent) -> None:
        """Raise `IllegalTransitionError` if `event` would be rejected; change nothing."""
        verb = verb_of(event.type)
        if verb is None or event.id in self._applied_ids:
            return
        name = event.subject or ""
        current = self.state_of(name)
        if not name or not is_allowed(verb, current):
            raise IllegalTransitionError(
                name or "<none>", current.value if current else "absent", event.type
            )

    def apply(self, event: CloudEvent) -> bool:
        """Apply one event. True if it changed the projection, False for a repeat or an
        event of another kind; raises for an illegal transition (and changes nothing)."""
        verb = verb_of(event.type)
        if verb is None:
            return False
        if event.id in self._applied_ids:
            self.ignored += 1
            return False
        try:
            self.check(event)
        except IllegalTransitionError:
            self.rejected += 1
            raise
        name = event.subject or ""
        self._applied_ids.add(event.id)
        self.applied += 1
        target = TARGET[verb]
        if target is None:
            del self._machines[name]
            return True
        previous = self._machines.get(name)
        target, resumes_to = _interruption(verb, target, previous)
        reason: str | None = None
        if target in STATES_WITH_REASON:
            raw = event.data.get("reason") or event.data.get("message") or None
            reason = str(raw) if raw is not None else None
        self._machines[name] = MachineProjection(
            name=name,
            state=target,
            reason=reason,
            since=event.time,
            last_event_id=event.id,
            last_event_type=event.type,
            events_applied=(previous.events_applied if previous else 0) + 1,
            ever_started=(previous.ever_started if previous else False)
            or verb is Verb.BOOTING,
            resumes_to=resumes_to,
        )
        return True

    def snapshot(self) -> ProjectionSnapshot:
        counts = Counter(m.state.value for m in self._machines.values())
        return ProjectionSnapshot(
            machines={k: v.model_copy() for k, v in sorted(self._machines.items())},
            by_state=dict(sorted(counts.items())),
            applied=self.applied,
            ignored=self.ignored,
            rejected=self.rejected,
        )


def _interruption(verb: Verb, target: InstanceState, previous: MachineProjection | None
                  ) -> tuple[InstanceState, InstanceState | None]:
    """The state an event leads to, and where a machine it interrupts resumes: derived
    here from the events alone, so a replay of the log resumes to the same state."""
    if previous is None:
        return target, None
    before = previous.resumes_to if previous.state in INTERRUPTED_STATES else None
    if verb is Verb.RECOVERED:
        return before or InstanceState.READY, None
    if target in INTERRUPTED_STATES:
        return target, before or resume_state(previous.state)
    return target, None
