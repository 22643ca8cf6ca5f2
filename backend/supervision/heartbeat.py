"""The hypervisor heartbeat: is each running machine's QEMU still answering QMP?

A process that dies is reported by its pidfd; a process that hangs (a deadlock, a disk
or NFS that stalls, memory pressure, a SIGSTOP) reports nothing at all, so this is the
one check boxui makes on a timer rather than being told. It is cheap: one `query-status`
round trip per machine every `interval` seconds, each bounded by `timeout`. A machine
whose QMP misses `misses` beats in a row is reported silent; one that answers again is
reported answering. What that means for the machine (the `unresponsive` state, the
restart policy) is the supervisor's to decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from backend.drivers.base import HypervisorDriver, VmHandle

DEFAULT_INTERVAL = 2.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_MISSES = 2


@dataclass(frozen=True)
class Beat:
    """One machine's answer to one beat: `problem` is None when QMP answered."""

    name: str
    handle: VmHandle
    problem: str | None


class Heartbeat:
    """`handles` is read afresh every beat (like the health sampler's), and `watched`
    says whether a machine's state is one the heartbeat judges (a boot or a stop has its
    own deadlines). `on_silent` is called on every beat a machine stays silent once it
    has missed `misses` in a row, `on_answer` on every beat it answers: the callee
    knows from the machine's state whether that changes anything (cheap), and a
    machine adopted as unresponsive recovers without this having seen it miss. Neither
    may wait on a machine's lock: one slow machine must not delay the others' beats."""

    def __init__(
        self,
        driver: HypervisorDriver,
        handles: Callable[[], Mapping[str, VmHandle]],
        watched: Callable[[str], bool],
        on_silent: Callable[[Beat], Awaitable[None]],
        on_answer: Callable[[Beat], Awaitable[None]],
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        misses: int = DEFAULT_MISSES,
    ) -> None:
        if misses < 1:
            raise ValueError("misses must be at least 1")
        self.driver = driver
        self.handles = handles
        self.watched = watched
        self.on_silent = on_silent
        self.on_answer = on_answer
        self.interval = interval
        self.timeout = timeout
        self.misses = misses
        #: consecutive beats each machine's current process missed
        self.missed: dict[str, int] = {}
        self._pids: dict[str, int] = {}

    async def run(self) -> None:
        """Beat, then sleep what is left of the interval: beats never overlap."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.beat_once()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def beat_once(self) -> list[Beat]:
        handles = {name: h for name, h in self.handles().items() if self.watched(name)}
        for name in [n for n in self.missed if n not in handles]:
            del self.missed[name]
        beats = await asyncio.gather(*(self._beat(n, h) for n, h in handles.items()))
        for beat in beats:
            await self._report(beat)
        return list(beats)

    async def _beat(self, name: str, handle: VmHandle) -> Beat:
        if self._pids.get(name) != handle.pid:  # a new process starts with a clean slate
            self._pids[name] = handle.pid
            self.missed.pop(name, None)
        return Beat(name, handle, await qmp_problem(self.driver, handle, self.timeout))

    async def _report(self, beat: Beat) -> None:
        if beat.problem is None:
            self.missed.pop(beat.name, None)
            await self.on_answer(beat)
            return
        self.missed[beat.name] = self.missed.get(beat.name, 0) + 1
        if self.missed[beat.name] >= self.misses:
            await self.on_silent(beat)


async def qmp_problem(driver: HypervisorDriver, handle: VmHandle, timeout: float) -> str | None:
    """Why `handle`'s QMP did not answer within `timeout`; None if it answered (or the
    process has exited: its exit watcher reports that)."""
    try:
        async with asyncio.timeout(timeout):
            probe = await driver.probe(handle)
    except TimeoutError:
        return f"QMP did not answer within {timeout:g} s"
    except Exception as exc:  # a broken connection is as silent as a hung one
        return f"QMP failed: {exc}"
    if probe.alive and not probe.responsive:
        return f"QMP does not answer ({probe.status})"
    return None
