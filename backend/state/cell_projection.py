"""The cell projection: a cell's current state derived from its events, nowhere else.

A cell is one command run in a throwaway machine (`boxui run`). Its steps are CloudEvents
`dev.boxui.cell.v1.<verb>` in the same log as the machines' (the cellos-core lifecycle:
started, identity, inputs, command, export, destroyed), and this reducer is the one place
that reads them back. Like the machine projection it is idempotent by event id (a repeat
changes nothing) and rejects an illegal step with an error naming the cell, its stage and
the event, leaving itself exactly as it was; the live daemon and a replay of the log run
the same code, so a daemon that starts after a crash knows which cells were cut off where.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from backend.errors import BoxuiError
from backend.state.events import CloudEvent, now_utc

CELL_TYPE_PREFIX = "dev.boxui.cell.v1."
CELL_SOURCE = "/boxui/cells"


class CellVerb(StrEnum):
    STARTED = "started"
    MATERIALIZED = "materialized"        # identity: its own machine, keys and RNG, ready
    IDENTITY_FAILED = "identity_failed"
    INPUTS_COPIED = "inputs_copied"
    INPUTS_FAILED = "inputs_failed"
    COMMAND_COMPLETED = "command_completed"  # it ran and exited, with any exit code
    COMMAND_FAILED = "command_failed"        # it did not finish: timeout, cancel, SSH
    EXPORTED = "exported"
    EXPORT_FAILED = "export_failed"
    DESTROYED = "destroyed"


class CellStage(StrEnum):
    STARTED = "started"
    IDENTITY_READY = "identity_ready"
    IDENTITY_FAILED = "identity_failed"
    INPUTS_COPIED = "inputs_copied"
    INPUTS_FAILED = "inputs_failed"
    COMMAND_COMPLETED = "command_completed"
    COMMAND_FAILED = "command_failed"
    EXPORTED = "exported"
    EXPORT_FAILED = "export_failed"
    DESTROYED = "destroyed"


_S = CellStage
#: each step, the stages it may follow (None: a cell not seen yet) and the stage it leads to
TRANSITIONS: dict[CellVerb, tuple[frozenset[CellStage | None], CellStage]] = {
    CellVerb.STARTED: (frozenset({None}), _S.STARTED),
    CellVerb.MATERIALIZED: (frozenset({_S.STARTED}), _S.IDENTITY_READY),
    CellVerb.IDENTITY_FAILED: (frozenset({_S.STARTED}), _S.IDENTITY_FAILED),
    CellVerb.INPUTS_COPIED: (frozenset({_S.IDENTITY_READY}), _S.INPUTS_COPIED),
    CellVerb.INPUTS_FAILED: (frozenset({_S.IDENTITY_READY}), _S.INPUTS_FAILED),
    CellVerb.COMMAND_COMPLETED: (frozenset({_S.IDENTITY_READY, _S.INPUTS_COPIED}),
                                 _S.COMMAND_COMPLETED),
    CellVerb.COMMAND_FAILED: (frozenset({_S.IDENTITY_READY, _S.INPUTS_COPIED}),
                              _S.COMMAND_FAILED),
    CellVerb.EXPORTED: (frozenset({_S.COMMAND_COMPLETED}), _S.EXPORTED),
    CellVerb.EXPORT_FAILED: (frozenset({_S.COMMAND_COMPLETED}), _S.EXPORT_FAILED),
    CellVerb.DESTROYED: (frozenset(set(CellStage) - {_S.DESTROYED}), _S.DESTROYED),
}


class IllegalCellTransitionError(BoxuiError):
    code = "illegal_transition"

    def __init__(self, cell: str, stage: str, event_type: str) -> None:
        super().__init__(f"illegal transition for cell {cell!r}: event {event_type} is "
                         f"not allowed from stage {stage!r}")


class Artifact(BaseModel):
    guest_path: str
    host_path: str
    size_bytes: int = Field(ge=0)
    sha256: str


class CellView(BaseModel):
    """A cell as `boxui cells` and `GET /v1/cells` show it."""

    id: str
    name: str = Field(description="the cell's machine is named so too")
    argv: list[str]
    source: str = Field(description="how its machine is made: default, image NAME or "
                        "template ID:ROLE")
    keep: bool = False
    #: guest paths of its inputs and exports
    inputs: list[str] = Field(default_factory=list)
    exports: list[str] = Field(default_factory=list)
    stage: CellStage
    #: the cell's story in one word: running, succeeded, failed, interrupted, cancelled
    outcome: str
    exit_code: int | None = None
    reason: str | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    started_at: datetime
    ended_at: datetime | None = None
    machine_kept: bool = False
    events_applied: int = 0
    last_event_id: str


def cell_type(verb: CellVerb) -> str:
    return CELL_TYPE_PREFIX + verb.value


def cell_verb_of(event_type: str) -> CellVerb | None:
    if not event_type.startswith(CELL_TYPE_PREFIX):
        return None
    try:
        return CellVerb(event_type[len(CELL_TYPE_PREFIX):])
    except ValueError:
        return None


def new_cell_event(cell_id: str, name: str, verb: CellVerb, **data: Any) -> CloudEvent:
    """A cell step; `subject` is the cell's (and its machine's) name, so `boxui events
    NAME` tells the cell's story beside its machine's."""
    return CloudEvent(id=str(uuid.uuid4()), source=CELL_SOURCE, type=cell_type(verb),
                      time=now_utc(), subject=name,
                      data={"cell": cell_id, "name": name, **data})


class CellProjection:
    def __init__(self) -> None:
        self._cells: dict[str, CellView] = {}
        self._applied_ids: set[str] = set()
        self.applied = 0
        self.ignored = 0
        self.rejected = 0

    @classmethod
    def replay(cls, events: Iterable[CloudEvent]) -> CellProjection:
        """One bad record is counted, not fatal: it cannot hide the cells after it."""
        projection = cls()
        for event in events:
            with contextlib.suppress(IllegalCellTransitionError):
                projection.apply(event)
        return projection

    def get(self, cell_id: str) -> CellView | None:
        cell = self._cells.get(cell_id)
        return cell.model_copy(deep=True) if cell else None

    def cells(self) -> list[CellView]:
        """Oldest first, as they started."""
        return [c.model_copy(deep=True)
                for c in sorted(self._cells.values(), key=lambda c: c.started_at)]

    def unfinished(self) -> list[CellView]:
        return [c for c in self.cells() if c.stage is not CellStage.DESTROYED]

    def check(self, event: CloudEvent) -> None:
        """Raise `IllegalCellTransitionError` if `event` would be rejected; change nothing."""
        verb = cell_verb_of(event.type)
        if verb is None or event.id in self._applied_ids:
            return
        cell_id = event.data.get("cell")
        current = self._cells.get(cell_id) if isinstance(cell_id, str) else None
        allowed, _ = TRANSITIONS[verb]
        stage = current.stage if current else None
        if not isinstance(cell_id, str) or not cell_id or stage not in allowed:
            raise IllegalCellTransitionError(str(cell_id or "<none>"),
                                             stage.value if stage else "absent", event.type)

    def apply(self, event: CloudEvent) -> bool:
        """True if `event` changed the projection; False for a repeat or another kind of
        event; raises for an illegal step (and changes nothing)."""
        verb = cell_verb_of(event.type)
        if verb is None:
            return False
        if event.id in self._applied_ids:
            self.ignored += 1
            return False
        try:
            self.check(event)
        except IllegalCellTransitionError:
            self.rejected += 1
            raise
        cell_id = str(event.data["cell"])
        self._applied_ids.add(event.id)
        self.applied += 1
        previous = self._cells.get(cell_id)
        cell = _first(event, cell_id) if previous is None else previous.model_copy(deep=True)
        _step(cell, verb, event)
        cell.events_applied += 1
        cell.last_event_id = event.id
        self._cells[cell_id] = cell
        return True


def _first(event: CloudEvent, cell_id: str) -> CellView:
    data = event.data
    return CellView(id=cell_id, name=str(data.get("name") or event.subject or ""),
                    argv=_strings(data.get("argv")), inputs=_strings(data.get("inputs")),
                    exports=_strings(data.get("exports")),
                    source=str(data.get("source") or "default"), keep=bool(data.get("keep")),
                    stage=CellStage.STARTED, outcome="running", started_at=event.time,
                    last_event_id=event.id)


def _step(cell: CellView, verb: CellVerb, event: CloudEvent) -> None:
    """Move `cell` by one checked step: what each step records beside its stage."""
    data = event.data
    cell.stage = TRANSITIONS[verb][1]
    reason = data.get("reason")
    if verb in (CellVerb.IDENTITY_FAILED, CellVerb.INPUTS_FAILED, CellVerb.COMMAND_FAILED,
                CellVerb.EXPORT_FAILED):
        cell.outcome = str(data.get("outcome") or "failed")
        cell.reason = str(reason) if reason is not None else None
    elif verb is CellVerb.COMMAND_COMPLETED:
        code = data.get("exit_code")
        cell.exit_code = code if isinstance(code, int) else None
        cell.outcome = "succeeded" if cell.exit_code == 0 else "failed"
    elif verb is CellVerb.EXPORTED:
        cell.artifacts = [Artifact.model_validate(a) for a in data.get("artifacts") or []]
    elif verb is CellVerb.DESTROYED:
        cell.ended_at = event.time
        cell.machine_kept = bool(data.get("kept"))
        if reason is not None:  # cut off: by a cancel, or by a supervisor that died
            cell.reason = str(reason)
            cell.outcome = str(data.get("outcome") or "interrupted")
        elif cell.outcome == "running":
            cell.outcome = "succeeded"


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
