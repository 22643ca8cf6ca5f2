"""What a supervisor does with the commands a dead one left unfinished.

A supervisor holds the state dir's lock, so any command recorded `pending` or
`dispatched` at its start belongs to a supervisor that is gone: its lease can only run
out, and nobody will renew it. Such a command may have run, in part or whole, and its
caller is gone too. So:
- one marked idempotent, with attempts left, on a machine that is running, is dispatched
  again with `attempt + 1` (its output goes to the record's sizes, as no one waits);
- one never dispatched and idempotent is dispatched (a first run, not a second);
- every other is `expired` with the reason, never run again; its processes, which may
  outlive their lost channel, are killed in the guest.
This runs once machines are re-adopted, so whether a machine runs is known.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from backend.errors import BoxuiError
from backend.state.command_record import CommandRecord, CommandState
from backend.state.events import now_utc
from backend.state.lifecycle import InstanceState

if TYPE_CHECKING:  # the caller's type only; it imports this module
    from backend.supervision.machine_exec import MachineExec

log = logging.getLogger(__name__)

_RUNNING = (InstanceState.READY, InstanceState.BUSY)


def _lease_note(record: CommandRecord) -> str:
    owner = f"pid {record.owner_pid}" if record.owner_pid else "its supervisor"
    if record.lease_expires_at is None:
        return f"{owner} died before dispatching it"
    return (f"{owner} died while it ran (lease to "
            f"{record.lease_expires_at.isoformat(timespec='seconds')})")


async def recover_commands(machine_exec: MachineExec) -> None:
    """Finish or dispatch again every command left unfinished; one at a time per
    command, each re-dispatch in its own task (they may run long)."""
    registry = machine_exec.registry
    for note in registry.journal.notes if registry.journal is not None else []:
        log.warning("%s", note)  # what loading the journals found damaged
    redispatched: list[asyncio.Task[None]] = []
    for record in registry.unfinished():
        try:
            task = await _recover(machine_exec, record, now_utc())
        except BoxuiError as exc:  # one bad record must not stop the others
            log.warning("command %s on %s: recovery failed: %s", record.id, record.machine,
                        exc)
            continue
        if task is not None:
            redispatched.append(task)
    if redispatched:
        await asyncio.gather(*redispatched, return_exceptions=True)


async def _recover(machine_exec: MachineExec, record: CommandRecord,
                   now: datetime) -> asyncio.Task[None] | None:
    registry = machine_exec.registry
    note = _lease_note(record)
    state = machine_exec.engine.projection.state_of(record.machine)
    why_not = _why_not_again(record, state, now)
    if why_not is None:
        if record.state is CommandState.DISPATCHED:
            record = registry.requeue(record.id, note)
        log.info("command %s on %s: %s; dispatching it again (attempt %d of %d)",
                 record.id, record.machine, note, record.attempt, record.max_attempts)
        return asyncio.create_task(_dispatch_again(machine_exec, record))
    reason = f"{note}; {why_not}"
    if record.state is CommandState.DISPATCHED and state in _RUNNING:
        port = machine_exec.engine.store.load_record(record.machine).ssh_port
        if port is not None:
            reason += "; " + await machine_exec.kill_in_guest(record.machine, port, record.id)
    await registry.finish(record.id, error=reason, state=CommandState.EXPIRED)
    log.warning("command %s on %s expired: %s", record.id, record.machine, reason)
    await machine_exec.settle(record.machine)
    return None


def _why_not_again(record: CommandRecord, state: InstanceState | None,
                   now: datetime) -> str | None:
    """Why `record` must not be dispatched again, or None if it may."""
    if not record.idempotent:
        return ("not idempotent, so never run again" if record.state is
                CommandState.DISPATCHED else "never dispatched; not idempotent")
    if record.state is CommandState.DISPATCHED and record.attempt >= record.max_attempts:
        return f"attempt {record.attempt} of {record.max_attempts} was the last"
    if record.deadline is not None and record.deadline <= now:
        return "its deadline passed meanwhile"
    if state not in _RUNNING:
        return f"{record.machine} is {state.value if state else 'gone'}"
    return None


async def _dispatch_again(machine_exec: MachineExec, record: CommandRecord) -> None:
    port = machine_exec.engine.store.load_record(record.machine).ssh_port
    stdin = base64.b64decode(record.stdin_b64) if record.stdin_b64 else None
    timeout = ((record.deadline - now_utc()).total_seconds()
               if record.deadline is not None else None)
    if port is None or (timeout is not None and timeout <= 0):
        await machine_exec.registry.finish(
            record.id, error="no SSH port to dispatch it again on" if port is None
            else "its deadline passed meanwhile", state=CommandState.EXPIRED)
        return
    await machine_exec.mark_busy(record.machine)
    try:
        await machine_exec.carry(record, port, stdin, timeout)
    except BoxuiError as exc:  # recorded by `carry`; no caller to tell
        log.warning("command %s on %s, attempt %d: %s", record.id, record.machine,
                    record.attempt, exc)
