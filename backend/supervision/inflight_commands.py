"""The registry of commands run in machines: the one source of truth for their work.

Every command that goes through boxui is recorded here first (the alien-commands
registry: id, state, attempt, deadline, lease, dispatched/completed times, sizes, error),
on disk in `commands/<machine>.jsonl` (`backend.state.command_journal`), so the next
supervisor knows what a dead one left running. Scale-down drains an instance by waiting
until nothing is in flight in it.

The interface the rest of boxui uses (exec, `boxui run` cells, recovery):
`begin` -> `dispatch` (then `flush`, while the channel opens) -> `keep_lease` while it
runs -> `finish` (with `state=` for expired or cancelled);
`requeue` sends an interrupted idempotent command round again; `commands` and
`in_flight` read; `wait_idle` waits for a machine to have nothing in flight.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from backend.state.command_journal import CommandJournal, Retention
from backend.state.command_record import (
    CommandRecord,
    CommandState,
    advance,
)
from backend.state.events import now_utc

__all__ = ["LEASE", "CommandRecord", "CommandRegistry", "CommandState"]

#: a dispatched command's lease; its owner renews it at a third of this while it runs
LEASE = timedelta(seconds=30)
#: stdin up to this size is kept with an idempotent command, to dispatch it again
KEEP_STDIN = 64 * 1024


class CommandRegistry:
    def __init__(self, journal: CommandJournal | None = None, *,
                 lease: timedelta = LEASE) -> None:
        """Without a journal nothing is written (tests of other parts, and the demo)."""
        self.journal = journal
        self.lease = lease
        self._records: dict[str, CommandRecord] = {}
        self._changed = asyncio.Condition()
        if journal is not None:
            for record in journal.load():
                self._records[record.id] = record

    @classmethod
    def open(cls, root: os.PathLike[str] | str, retention: Retention | None = None,
             ) -> CommandRegistry:
        """The registry of the state dir at `root` (its `commands/` journals)."""
        return cls(CommandJournal(Path(root) / "commands", retention))

    # --- steps ------------------------------------------------------------------------

    def begin(self, machine: str, argv: list[str], *, stdin: bytes | None = None,
              deadline: datetime | None = None, idempotent: bool = False,
              max_attempts: int = 1, origin: str = "exec",
              service: str | None = None) -> CommandRecord:
        """Record a new command, `pending`. `max_attempts` above 1 needs `idempotent`."""
        command = shlex.join(argv)
        keep = idempotent and stdin is not None and len(stdin) <= KEEP_STDIN
        record = CommandRecord(
            id=uuid.uuid4().hex, machine=machine, argv=list(argv), command=command[:200],
            origin=origin, service=service, idempotent=idempotent,
            max_attempts=max_attempts if idempotent else 1, deadline=deadline,
            created_at=now_utc(), request_size_bytes=len(command) + len(stdin or b""),
            stdin_b64=base64.b64encode(stdin).decode() if keep and stdin else None)
        if idempotent and stdin and not keep:  # its input is not kept: one attempt only
            record.max_attempts = 1
        self._write(record)
        return record

    def dispatch(self, command_id: str, *, service: str | None = None) -> CommandRecord:
        """It goes on a channel now: written first (a supervisor killed from here on
        leaves a `dispatched` record, whose processes recovery kills in the guest), with
        a lease. Syncing it is `flush`'s, overlapped with the channel opening."""
        now = now_utc()
        return self._step(command_id, CommandState.DISPATCHED, dispatched_at=now,
                          lease_expires_at=now + self.lease, owner_pid=os.getpid(),
                          service=service)

    async def flush(self, machine: str) -> None:
        """`machine`'s journal synced to disk, in a thread: what a caller awaits before
        it answers that a command ran. The line is in the file already; only a crash of
        the whole host, which takes the guest with it, could lose it before this."""
        if self.journal is not None:
            await asyncio.to_thread(self.journal.flush, machine)

    async def keep_lease(self, command_id: str) -> None:
        """Renew the command's lease until cancelled (by its owner, when it ends): a
        timer here, never a question to the guest."""
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            record = self._records.get(command_id)
            if record is None or record.state is not CommandState.DISPATCHED:
                return
            self._step(command_id, CommandState.DISPATCHED,
                       lease_expires_at=now_utc() + self.lease)

    async def finish(self, command_id: str, *, exit_code: int | None = None,
                     response_size: int | None = None, error: str | None = None,
                     state: CommandState | None = None) -> CommandRecord:
        """Its end: succeeded on exit 0, failed otherwise, or `state` (expired, cancelled)."""
        if state is None:
            state = CommandState.SUCCEEDED if error is None and exit_code == 0 \
                else CommandState.FAILED
        record = self._step(command_id, state, completed_at=now_utc(), exit_code=exit_code,
                            response_size_bytes=response_size, error=error,
                            lease_expires_at=None)
        async with self._changed:
            self._changed.notify_all()
        return record

    def requeue(self, command_id: str, reason: str) -> CommandRecord:
        """Its lease expired with its supervisor: `pending` again, attempt + 1 (only an
        idempotent command with attempts left; anything else is refused)."""
        record = self._records[command_id]
        return self._step(command_id, CommandState.PENDING, attempt=record.attempt + 1,
                          lease_expires_at=None, error=reason)

    def _step(self, command_id: str, to: CommandState, **changes: object) -> CommandRecord:
        record = advance(self._records[command_id], to, **changes)
        self._write(record)
        return record

    def _write(self, record: CommandRecord) -> None:
        if self.journal is not None:
            self.journal.append(record)
        self._records[record.id] = record
        if record.finished:
            self._compact_if_due(record.machine)

    def _compact_if_due(self, machine: str) -> None:
        if self.journal is None:
            return
        mine = [r for r in self._records.values() if r.machine == machine]
        if not self.journal.needs_compaction(machine, len(mine)):
            return
        kept = {r.id for r in self.journal.compact(machine, mine)}
        for record in mine:
            if record.id not in kept:
                del self._records[record.id]

    # --- reading ----------------------------------------------------------------------

    def get(self, command_id: str) -> CommandRecord | None:
        return self._records.get(command_id)

    def in_flight(self, machine: str) -> int:
        return sum(1 for r in self._records.values()
                   if r.machine == machine and not r.finished)

    def unfinished(self) -> list[CommandRecord]:
        return [r for r in self._records.values() if not r.finished]

    def commands(self, machine: str | None = None) -> list[CommandRecord]:
        """Commands not finished first, then finished ones, newest first."""
        chosen: Iterable[CommandRecord] = (
            r for r in self._records.values() if machine is None or r.machine == machine)
        return sorted(chosen, key=lambda r: (r.finished, -r.created_at.timestamp()))

    async def wait_idle(self, machine: str, timeout: float) -> bool:
        """Wait until `machine` has nothing in flight; False if `timeout` passed first.
        Woken by each finish, never by polling."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.in_flight(machine) == 0)
        except TimeoutError:
            return False
        return True
