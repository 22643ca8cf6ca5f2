"""The registry of commands run in machines: the one source of truth for in-flight work.

Scale-down drains an instance by waiting until nothing is in flight in it, so every exec
that goes through boxui is registered here first (the alien-commands registry: id, state,
attempt, deadline, dispatched/completed times, request/response sizes, error). Finished
commands are kept in a bounded history for `GET .../commands`; nothing here is persisted,
because a command cannot survive the supervisor that carried it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from backend.state.events import now_utc

HISTORY = 256


class CommandState(StrEnum):
    DISPATCHED = "dispatched"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CommandRecord(BaseModel):
    id: str
    machine: str
    command: str = Field(description="the command line, shortened for display")
    state: CommandState = CommandState.DISPATCHED
    attempt: int = Field(default=1, ge=1)
    deadline: datetime | None = None
    created_at: datetime
    dispatched_at: datetime | None = None
    completed_at: datetime | None = None
    request_size_bytes: int = Field(default=0, ge=0)
    response_size_bytes: int | None = Field(default=None, ge=0)
    exit_code: int | None = None
    error: str | None = None


class CommandRegistry:
    def __init__(self, history: int = HISTORY) -> None:
        self._active: dict[str, CommandRecord] = {}
        self._done: deque[CommandRecord] = deque(maxlen=history)
        self._changed = asyncio.Condition()

    def begin(self, machine: str, command: str, request_size: int,
              deadline: datetime | None = None) -> CommandRecord:
        now = now_utc()
        record = CommandRecord(id=str(uuid.uuid4()), machine=machine, command=command,
                               deadline=deadline, created_at=now, dispatched_at=now,
                               request_size_bytes=request_size)
        self._active[record.id] = record
        return record

    async def finish(self, command_id: str, *, exit_code: int | None = None,
                     response_size: int | None = None, error: str | None = None) -> None:
        record = self._active.pop(command_id, None)
        if record is None:
            return
        record.completed_at = now_utc()
        record.exit_code = exit_code
        record.response_size_bytes = response_size
        record.error = error
        record.state = CommandState.FAILED if error is not None else CommandState.SUCCEEDED
        self._done.append(record)
        async with self._changed:
            self._changed.notify_all()

    def in_flight(self, machine: str) -> int:
        return sum(1 for r in self._active.values() if r.machine == machine)

    def commands(self, machine: str | None = None) -> list[CommandRecord]:
        """In-flight commands first, then the most recent finished ones."""
        every = [*self._active.values(), *reversed(self._done)]
        return [r.model_copy() for r in every if machine is None or r.machine == machine]

    async def wait_idle(self, machine: str, timeout: float) -> bool:
        """Wait until `machine` has nothing in flight; False if `timeout` passed first.
        Woken by each finish, never by polling."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.in_flight(machine) == 0)
        except TimeoutError:
            return False
        return True
