"""The engine: the one owner of a state dir while it runs.

Every change goes through `Engine.transition`, in one order: check against the projection,
append the event to the log (the commit point), apply it to the projection, write
`state.json`, publish to subscribers, and only then refresh the `ls` cache (derived data,
checked against file signatures when read, so subscribers need not wait for it). A crash
between the log append and the record write is repaired at the next start, because the
log wins (see `disk_reconcile`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.errors import MachineExistsError, MachineNotFoundError
from backend.state import listing_cache
from backend.state.cancel_safe import cancel_safe
from backend.state.disk_reconcile import LogStep, Reconciliation, plan_reconciliation
from backend.state.event_bus import DEFAULT_QUEUE_SIZE, EventBus, Subscription
from backend.state.event_log import EventLog, LogReport
from backend.state.events import CloudEvent, new_instance_event, now_utc
from backend.state.lifecycle import STATES_WITH_REASON, InstanceState, Verb, persisted_state
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine, MachineStore, trashed_name
from backend.state.projection import Projection
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import StateDir, open_state_dir
from backend.state.supervisor_lock import SupervisorLock

RecordUpdate = Callable[[RuntimeRecord], None]

#: steps that only say whether commands are in flight, two for every exec: a command does
#: not survive its supervisor, and a machine recorded as running is probed and re-adopted
#: (as ready) after any crash, so neither needs to outlive a power cut. They are written
#: (readers see them) but not synced: no fsync of the log (the next durable append syncs
#: them with it; a lost tail is cut at start-up), nor of the directory after `state.json`
#: is renamed (its data is synced: the file is the old or the new one, never empty).
_TRANSIENT = frozenset({Verb.BUSY, Verb.IDLE})


class Engine:
    def __init__(
        self,
        dirs: StateDir,
        lock: SupervisorLock,
        log: EventLog,
        projection: Projection,
    ) -> None:
        self.dirs = dirs
        self.store = MachineStore(dirs)
        self.bus = EventBus()
        self.projection = projection
        self._lock = lock
        self._log = log
        self._write_lock = asyncio.Lock()
        self.startup_notes: list[str] = []
        #: machine -> service, for the machines that are instances of a service; their
        #: lifecycle events carry the service's name, so a service's story can be read
        #: from the log without knowing which machines were its instances
        self.memberships: dict[str, str] = {}

    @classmethod
    async def open(cls, root: Path | None = None, *,
                   lock: SupervisorLock | None = None) -> Engine:
        """Take the state dir: lock it, clean what a crash left, replay the log, reconcile.

        Raises `StateDirInUseError` at once if another supervisor holds it. A caller may
        pass the dir's `lock` already taken (a daemon takes it before loading the rest).
        """
        dirs = await asyncio.to_thread(open_state_dir, root)
        if lock is None:
            lock = SupervisorLock(dirs.lock_file)
            lock.acquire()
        elif not lock.held or lock.path != dirs.lock_file:
            raise ValueError(f"Engine.open needs the held lock of {dirs.lock_file}")
        try:
            store = MachineStore(dirs)
            leftovers = await asyncio.to_thread(store.remove_leftovers)
            log = await asyncio.to_thread(EventLog.open, dirs.event_log)
            projection = Projection.replay(log.initial_events())
            engine = cls(dirs, lock, log, projection)
            engine.startup_notes.extend(log.report.lines())
            on_disk = await asyncio.to_thread(store.load_all, supervised=True)
            await engine._apply(plan_reconciliation(
                on_disk, projection, deleting={n for p in leftovers if (n := trashed_name(p))}))
        except BaseException:
            lock.release()
            raise
        return engine

    async def _apply(self, plan: Reconciliation) -> None:
        """Make the disk and the log agree, through the same write path as every change."""
        self.startup_notes.extend(plan.notes)
        for action in plan.actions:
            if isinstance(action, LogStep):
                await self.transition(action.name, action.verb, message=action.message,
                                      reason=action.reason)
            else:
                await asyncio.to_thread(self.store.update_record, action.name, action)

    async def close(self) -> None:
        self._lock.release()

    @property
    def log_report(self) -> LogReport:
        return self._log.report

    # --- reading ---------------------------------------------------------------------

    def machines(self) -> list[LoadedMachine]:
        return self.store.load_all(supervised=True)

    def machine(self, name: str) -> LoadedMachine:
        return self.store.load(name, supervised=True)

    def subscribe(
        self, *, maxsize: int = DEFAULT_QUEUE_SIZE, machine: str | None = None
    ) -> Subscription:
        return self.bus.subscribe(maxsize=maxsize, machine=machine)

    # --- changing --------------------------------------------------------------------

    @cancel_safe
    async def transition(
        self,
        name: str,
        verb: Verb,
        *,
        message: str = "",
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
        update: RecordUpdate | None = None,
    ) -> CloudEvent:
        """Record one lifecycle step for `name`; raises `IllegalTransitionError` if the
        step makes no sense from the machine's current state (and then changes nothing).
        Once begun, a step finishes even if the caller is cancelled (`cancel_safe`)."""
        service = self.memberships.get(name)
        if service is not None:
            extra = {"service": service, **(extra or {})}
        async with self._write_lock:
            event = new_instance_event(
                name, verb, from_state=self.projection.state_of(name),
                message=message, reason=reason, extra=extra,
            )
            self.projection.check(event)
            durable = verb not in _TRANSIENT
            await asyncio.to_thread(self._log.append, event, durable=durable)
            self.projection.apply(event)
            # the projection's, not TARGET's: `recovered` resumes where it was interrupted
            target = self.projection.state_of(name)
            # a broken machine's files are never rewritten: the user may want to fix them
            if target not in (None, InstanceState.BROKEN) and self.store.exists(name):
                await asyncio.to_thread(
                    self.store.update_record, name,
                    _record_updater(target, verb, reason, update), sync_dir=durable,
                )
            self.bus.publish(event)
            # derived data, stat-checked when read: subscribers need not wait for it
            await asyncio.to_thread(listing_cache.refresh, self.dirs, [name])
            return event

    @cancel_safe
    async def record_event(self, event: CloudEvent) -> None:
        """Log and publish an event that is not a machine's lifecycle step (a service
        scaled, an endpoint registered); the projection ignores these."""
        async with self._write_lock:
            await asyncio.to_thread(self._log.append, event)
            self.bus.publish(event)

    async def update_record(self, name: str, update: RecordUpdate) -> RuntimeRecord:
        """Change runtime facts that are not lifecycle steps (a pid, a port)."""
        record = await asyncio.to_thread(self.store.update_record, name, update)
        await asyncio.to_thread(listing_cache.refresh, self.dirs, [name])
        return record

    @cancel_safe
    async def create_machine(self, spec: MachineSpec, *, boot_next: bool = False
                             ) -> LoadedMachine:
        """Write the machine's files, then log `creating` and `created`.

        Files first: if boxui dies in between, the next start finds a directory the log
        does not know and registers it, instead of a logged machine with no files. With
        `boot_next` the machine stays `creating` for a boot that follows at once (a
        service instance goes creating -> booting -> ready).
        """
        if self.store.exists(spec.name) or self.projection.state_of(spec.name) is not None:
            raise MachineExistsError(spec.name)
        await asyncio.to_thread(self.store.create, spec)
        await self.transition(spec.name, Verb.CREATING, message="machine created on disk")
        if not boot_next:
            await self.transition(spec.name, Verb.CREATED, message="ready to start")
        return self.machine(spec.name)

    @cancel_safe
    async def delete_machine(self, name: str, *, message: str = "deleted by user") -> None:
        if not self.store.exists(name) and self.projection.state_of(name) is None:
            raise MachineNotFoundError(name)
        # the directory first, with one rename: a crash after it leaves trash that the
        # next start removes, logging the delete there ("deletion finished at startup").
        # Logging first would let a crash resurrect the machine from its directory.
        trash = None
        if self.store.exists(name):
            trash = await asyncio.to_thread(self.store.move_to_trash, name)
        try:
            if self.projection.state_of(name) is not None:
                await self.transition(name, Verb.DELETED, message=message)
        except BaseException:
            if trash is not None and self.projection.state_of(name) is not None:
                # not logged (a full disk, say): put it back
                await asyncio.to_thread(self.store.restore_from_trash, name, trash)
            raise
        if trash is not None:
            await asyncio.to_thread(self.store.empty_trash, trash)
        await asyncio.to_thread(listing_cache.refresh, self.dirs, [name])


def _record_updater(
    target: InstanceState, verb: Verb, reason: str | None, update: RecordUpdate | None
) -> RecordUpdate:
    def apply(record: RuntimeRecord) -> None:
        record.state = target
        if verb is Verb.BOOTING:
            record.ever_started = True
            record.started_at = now_utc()
        if target is InstanceState.STOPPED and verb is Verb.STOPPED:
            record.stopped_at = now_utc()
        record.persisted = persisted_state(target, ever_started=record.ever_started)
        record.reason = reason if target in STATES_WITH_REASON else None
        if update is not None:
            update(record)

    return apply
