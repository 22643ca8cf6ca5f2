"""What the supervisor does when a running machine stops answering (issue 19).

Two things report it: the hypervisor heartbeat (`heartbeat.py`: QMP is silent, so the
machine is `unresponsive`) and the guest liveness probes (`liveness.py`: the guest fails
its probe `failures` times in a row, so it is `unhealthy`). Either ends with `recovered`
when the machine answers again, or, if its restart policy says so, with a kill that is
recorded as a crash, whose policy then restarts it with back-off. A QEMU paused by hand
(SIGSTOP, a debugger) and let go within `UNRESPONSIVE_GRACE` just recovers.

This is a part of `Supervisor` kept in a module of its own (a mixin): it uses the
supervisor's machine locks, handles and exit handling, declared below for the type
checker, and nothing else.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from backend.drivers.base import ExitInfo, HypervisorDriver, VmHandle
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.lifecycle import INTERRUPTED_STATES, InstanceState, Verb
from backend.supervision.heartbeat import Beat
from backend.supervision.liveness import ProbeOutcome
from backend.supervision.restart_policy import acts_on_hang

#: how long a machine stays unresponsive before its restart policy kills it: a QEMU
#: paused by hand (SIGSTOP, a debugger) that is let go again within it just recovers
UNRESPONSIVE_GRACE = 4.0
#: a SIGKILL of a proven process ends it at once; this only bounds a kernel that cannot
HUNG_KILL_TIMEOUT = 10.0
#: states in which the heartbeat checks a machine's QMP (a boot or stop has deadlines)
HEARTBEAT_STATES = frozenset({InstanceState.READY, InstanceState.BUSY, InstanceState.DRAINING,
                              *INTERRUPTED_STATES})


class Interruptions:
    """The supervisor's handling of unresponsive and unhealthy machines."""

    engine: Engine
    driver: HypervisorDriver
    handles: dict[str, VmHandle]
    unresponsive_grace: float
    _locks: defaultdict[str, asyncio.Lock]
    _stopping: set[str]
    _clock: Callable[[], float]
    #: when each unresponsive machine was last found silent first
    _silent_since: dict[str, float]
    #: machines a policy kill is under way for
    _killing_hung: set[str]

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        raise NotImplementedError  # the supervisor's

    async def _unexpected_exit(self, name: str, info: ExitInfo) -> None:
        raise NotImplementedError  # the supervisor's

    def _heartbeat_watches(self, name: str) -> bool:
        return self.engine.projection.state_of(name) in HEARTBEAT_STATES

    def _owns(self, name: str, handle: VmHandle) -> bool:
        """True if nothing else (a start, stop or exit) is handling the machine now, so
        that an interruption may be recorded without waiting for the machine's lock."""
        return not self._locks[name].locked() and self.handles.get(name) is handle

    async def _qmp_silent(self, beat: Beat) -> None:
        name, problem = beat.name, beat.problem or "QMP does not answer"
        if not self._owns(name, beat.handle):
            return
        if self.engine.projection.state_of(name) is not InstanceState.UNRESPONSIVE:
            async with self._locks[name]:
                self._silent_since[name] = self._clock()
                await self.engine.transition(
                    name, Verb.UNRESPONSIVE, reason=problem,
                    message=f"hypervisor pid {beat.handle.pid} does not answer")
        elif self._clock() - self._silent_since.setdefault(name, self._clock()) >= \
                self.unresponsive_grace:
            self._kill_hung_by_policy(name, beat.handle, problem)

    async def _qmp_answered(self, beat: Beat) -> None:
        name = beat.name
        if self.engine.projection.state_of(name) is InstanceState.UNRESPONSIVE and \
                self._owns(name, beat.handle):
            async with self._locks[name]:
                self._silent_since.pop(name, None)
                await self.engine.transition(name, Verb.RECOVERED,
                                             message="the hypervisor answers again")

    async def _probed(self, outcome: ProbeOutcome) -> None:
        name, state = outcome.name, self.engine.projection.state_of(outcome.name)
        if not self._owns(name, outcome.handle):
            return
        if outcome.error is None:
            if state is InstanceState.UNHEALTHY:
                async with self._locks[name]:
                    await self.engine.transition(name, Verb.RECOVERED,
                                                 message="the liveness probe passes again")
            return
        if outcome.failures >= outcome.spec.failures and \
                state in (InstanceState.READY, InstanceState.BUSY):
            async with self._locks[name]:
                await self.engine.transition(
                    name, Verb.UNHEALTHY, reason=outcome.error,
                    message=f"{outcome.failures} liveness probes failed in a row")
            self._kill_hung_by_policy(name, outcome.handle, outcome.error)

    def _kill_hung_by_policy(self, name: str, handle: VmHandle, problem: str) -> None:
        """Kill an unresponsive or unhealthy machine if its restart policy says so; the
        kill is recorded as a crash, whose policy then restarts it with back-off."""
        if name not in self._killing_hung:
            self._killing_hung.add(name)
            self.spawn(self._kill_hung(name, handle, problem), f"kill-hung-{name}")

    async def _kill_hung(self, name: str, handle: VmHandle, problem: str) -> None:
        try:
            # read in a thread: a slow disk must not stall the loop every other machine
            # is served by, at every beat of a hung one
            try:
                spec = await asyncio.to_thread(self.engine.store.load_spec, name)
            except BoxuiError:
                return
            if not acts_on_hang(spec.restart):
                return
            async with self._locks[name]:
                if self.handles.get(name) is not handle or \
                        self.engine.projection.state_of(name) not in INTERRUPTED_STATES:
                    return  # recovered, stopped or gone meanwhile
                self._stopping.add(name)  # this exit is ours, not the watcher's
                try:
                    async with asyncio.timeout(HUNG_KILL_TIMEOUT):
                        await self.driver.kill(handle)
                finally:
                    self._stopping.discard(name)
                self._silent_since.pop(name, None)
                await self._unexpected_exit(name, ExitInfo("hung", f"killed: {problem}"))
        finally:
            self._killing_hung.discard(name)

