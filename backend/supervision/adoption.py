"""Taking over what crash recovery found: a hypervisor proven to be a machine's, which
was running, booting, stopping or hung when the last boxui died, supervised from here on
as if it had been started here (what was in progress is finished, not forgotten).

This is a part of `Supervisor` kept in a module of its own (a mixin, as
`interruptions.py` is): it uses the supervisor's handles, locks, watchers and boot and
stop paths, declared below for the type checker, and nothing else.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from backend.drivers.base import ExitInfo, HypervisorDriver, VmHandle
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.lifecycle import Verb
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import release_written_initrds
from backend.supervision.boot_plan import RecordUpdate, adopted_process_record
from backend.supervision.restart_policy import RestartTracker


class Adoption:
    """The supervisor's adoption of the machines crash recovery proved its own."""

    engine: Engine
    driver: HypervisorDriver
    handles: dict[str, VmHandle]
    _locks: defaultdict[str, asyncio.Lock]
    _booting: set[str]
    _aborting: set[str]
    _stopping: set[str]
    _clock: Callable[[], float]
    _silent_since: dict[str, float]

    # the supervisor's own, which these build on
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        raise NotImplementedError

    def tracker(self, name: str) -> RestartTracker:
        raise NotImplementedError

    def _boot_task(self, name: str, body: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        raise NotImplementedError

    async def _hold(self, name: str, handle: VmHandle, identity: RecordUpdate) -> None:
        raise NotImplementedError

    async def _watch(self, name: str, handle: VmHandle) -> None:
        raise NotImplementedError

    async def _unexpected_exit(self, name: str, info: ExitInfo) -> None:
        raise NotImplementedError

    async def _boot_failed(self, name: str, handle: VmHandle | None,
                           exc: BaseException) -> None:
        raise NotImplementedError

    async def stop_machine(self, name: str) -> None:
        raise NotImplementedError

    def _spec_or_none(self, name: str) -> MachineSpec | None:
        raise NotImplementedError

    def boot_timeout_of(self, spec: MachineSpec | None) -> float:
        raise NotImplementedError

    def _boot_ended(self, name: str) -> None:
        """`name`'s boot is over, however it ended: a stop that asked to abort it
        aborts this boot only, never a later one."""
        self._booting.discard(name)
        self._aborting.discard(name)

    async def adopt_running(self, name: str, handle: VmHandle) -> None:
        """Supervise a hypervisor crash recovery proved to be this machine's, as if it
        had been started here."""
        # one write of its record with the event, not two: recovery of many machines
        # waits on each (they are serialised by the engine)
        self.handles[name] = handle
        await self.engine.transition(name, Verb.ADOPTED, update=adopted_process_record(handle),
                                     message=f"re-adopted running pid {handle.pid}")
        self.spawn(self._watch(name, handle), f"watch-{name}")
        self.tracker(name).machine_up()

    async def adopt_booting(self, name: str, handle: VmHandle) -> None:
        """Like `adopt_running`, for a guest that was still booting when boxui died: its
        boot is finished in the background."""
        await self._hold(name, handle, adopted_process_record(handle))
        self._booting.add(name)  # now, so a stop before the task runs aborts it
        self._boot_task(name, self._finish_adopted_boot(name, handle))

    async def adopt_stopping(self, name: str, handle: VmHandle) -> None:
        """Like `adopt_running`, for a guest boxui was stopping when it died: the stop
        that was asked for is finished, not forgotten."""
        self._stopping.add(name)  # its exit meanwhile belongs to the stop below
        await self._hold(name, handle, adopted_process_record(handle))
        self.spawn(self._finish_adopted_stop(name), f"stop-{name}")

    async def _finish_adopted_stop(self, name: str) -> None:
        try:
            await self.stop_machine(name)  # carries on from `stopping`
        finally:
            self._stopping.discard(name)

    async def machine_crashed(self, name: str, reason: str) -> None:
        """Crash recovery found the machine's process gone: record it and apply policy."""
        async with self._locks[name]:
            await self._unexpected_exit(name, ExitInfo("vanished", reason))

    async def _finish_adopted_boot(self, name: str, handle: VmHandle) -> None:
        """Wait for an adopted guest that was still booting, exactly as a boot started
        here would: under the machine's lock and marked as booting, so a stop meanwhile
        aborts the boot instead of racing it."""
        async with self._locks[name]:
            if self.handles.get(name) is not handle:
                self._boot_ended(name)  # stopped (or deleted) before we got here
                return
            try:
                spec = await asyncio.to_thread(self._spec_or_none, name)
                await self.driver.wait_ready(handle, self.boot_timeout_of(spec))
            except (BoxuiError, OSError) as exc:
                if self.handles.get(name) is handle:  # else its exit was handled already
                    await self._boot_failed(name, handle, exc)
                if name in self._aborting:
                    return
                raise
            finally:
                self._boot_ended(name)
            await asyncio.to_thread(release_written_initrds,
                                    self.engine.dirs.machine_dir(name))
            await self.engine.transition(name, Verb.READY,
                                         message=f"re-adopted pid {handle.pid}; ready")
            self.tracker(name).machine_up()

    async def adopt_unresponsive(self, name: str, handle: VmHandle, problem: str) -> None:
        """Like `adopt_running`, for a proven hypervisor whose QMP does not answer: it is
        ours (stop, `stop --force` and rm can kill it), and its policy applies."""
        await self.adopt_running(name, handle)
        self._silent_since[name] = self._clock()
        await self.engine.transition(name, Verb.UNRESPONSIVE, reason=problem,
                                     message=f"re-adopted pid {handle.pid}, which does not "
                                     "answer")
