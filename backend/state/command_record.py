"""One command run in a machine, and the steps it may take (the alien-commands registry).

A command is recorded before it reaches the guest and after each step, so a supervisor
that dies mid-command leaves a record the next one can act on. The steps are checked
here, as the machine projection checks a machine's: a finished command never runs again,
and a command comes back to `pending` only with its attempt counted up (its lease expired
and it is marked idempotent), never silently.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from backend.errors import BoxuiError


class CommandState(StrEnum):
    PENDING = "pending"        # recorded, not yet on a channel
    DISPATCHED = "dispatched"  # on a channel: it may have run, in part or whole
    SUCCEEDED = "succeeded"    # ran and exited 0
    FAILED = "failed"          # exited non-zero, or the channel failed
    EXPIRED = "expired"        # its deadline passed, or its lease did and it is not retried
    CANCELLED = "cancelled"    # given up by its caller before it finished


FINISHED = frozenset({CommandState.SUCCEEDED, CommandState.FAILED, CommandState.EXPIRED,
                      CommandState.CANCELLED})

#: every step a command may take; dispatched -> dispatched is a lease renewal,
#: dispatched -> pending a re-dispatch after its lease expired (attempt + 1), and
#: pending -> failed a command that could not be dispatched (it never ran)
_NEXT: dict[CommandState, frozenset[CommandState]] = {
    CommandState.PENDING: frozenset({CommandState.DISPATCHED, CommandState.FAILED,
                                     CommandState.EXPIRED, CommandState.CANCELLED}),
    CommandState.DISPATCHED: frozenset({CommandState.DISPATCHED, CommandState.PENDING,
                                        *FINISHED}),
}


class IllegalCommandTransitionError(BoxuiError):
    code = "illegal_transition"


class CommandRecord(BaseModel):
    id: str
    machine: str
    argv: list[str] = Field(default_factory=list, description="the command and its arguments")
    command: str = Field(description="the command line, shortened for display")
    origin: str = Field(default="exec", description="what ran it: exec, run, service")
    service: str | None = Field(default=None, description="the machine's service, if any")
    state: CommandState = CommandState.PENDING
    attempt: int = Field(default=1, ge=1)
    max_attempts: int = Field(default=1, ge=1)
    idempotent: bool = Field(default=False,
                             description="safe to run again when its supervisor died")
    deadline: datetime | None = None
    lease_expires_at: datetime | None = Field(
        default=None, description="while dispatched: renewed by the supervisor that owns "
                                  "the channel; past it, that supervisor is gone")
    owner_pid: int | None = Field(default=None, description="the supervisor that dispatched it")
    created_at: datetime
    dispatched_at: datetime | None = None
    completed_at: datetime | None = None
    request_size_bytes: int = Field(default=0, ge=0)
    response_size_bytes: int | None = Field(default=None, ge=0)
    exit_code: int | None = None
    error: str | None = None
    stdin_b64: str | None = Field(default=None, exclude=True,
                                  description="kept only to dispatch an idempotent command "
                                              "again")

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def advance(record: CommandRecord, to: CommandState, **changes: Any) -> CommandRecord:
    """`record` moved to `to` with `changes`; raises if the step is not allowed (the
    record is never changed in place: the caller writes the new one, then keeps it)."""
    allowed = _NEXT.get(record.state, frozenset())
    if to not in allowed:
        raise IllegalCommandTransitionError(
            f"command {record.id} on {record.machine}: cannot go from {record.state.value} "
            f"to {to.value}")
    if to is CommandState.PENDING and not record.idempotent:
        raise IllegalCommandTransitionError(
            f"command {record.id} on {record.machine}: not idempotent, never run again")
    if to is CommandState.PENDING and record.attempt >= record.max_attempts:
        raise IllegalCommandTransitionError(
            f"command {record.id} on {record.machine}: attempt {record.attempt} of "
            f"{record.max_attempts} was the last")
    return record.model_copy(update={"state": to, **changes})
