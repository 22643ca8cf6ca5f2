"""Periodic health samples of running VMs, for the supervisor and the UI's sparklines.

Health is sampled by nature (CPU use and guest memory change continuously, nothing
notifies), so this is the one place boxui polls. It stays cheap: psutil reads a couple of
/proc files per VM, guest memory is one QMP round trip, and SSH is checked only every few
rounds (the console log's size with it: see console_rotation.py), as a command on the
machine's kept SSH connection (`ssh_check`, set by whoever runs commands): a fresh TCP
connection per check would make the guest's sshd log "connection from ... / exit before
auth" to its console every few seconds. Subscribers get the same bounded-queue treatment
as the event bus, except that a full queue drops its *oldest* sample: for health only
the latest matters, and the sampler must never wait on a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import psutil

from backend.drivers.base import GuestMemory, HypervisorDriver, VmHandle
from backend.state.process_liveness import START_TIME_TOLERANCE
from backend.supervision.console_rotation import CONSOLE_LOG_LIMIT, rotate_if_large

#: does the machine's SSH answer? None: could not tell (nothing to check it with)
SshCheck = Callable[[VmHandle, float], Awaitable[bool | None]]

SeriesField = Literal["cpu_percent", "rss_bytes", "guest_total_bytes", "guest_free_bytes",
                      "guest_used_bytes", "ssh_ok"]


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One machine at one moment; None means "could not tell", never zero."""

    machine: str
    time: float
    cpu_percent: float | None
    rss_bytes: int | None
    guest_total_bytes: int | None
    guest_free_bytes: int | None
    ssh_ok: bool | None  # None: not checked in this sample

    @property
    def guest_used_bytes(self) -> int | None:
        if self.guest_total_bytes is None or self.guest_free_bytes is None:
            return None
        return self.guest_total_bytes - self.guest_free_bytes


class HealthHistory:
    """The last `maxlen` samples per machine: enough for a sparkline, bounded forever."""

    def __init__(self, maxlen: int = 300) -> None:
        self.maxlen = maxlen
        self._samples: defaultdict[str, deque[HealthSample]] = defaultdict(
            lambda: deque(maxlen=self.maxlen))

    def add(self, sample: HealthSample) -> None:
        self._samples[sample.machine].append(sample)

    def latest(self, name: str) -> HealthSample | None:
        ring = self._samples.get(name)
        return ring[-1] if ring else None

    def samples(self, name: str) -> list[HealthSample]:
        return list(self._samples.get(name, ()))

    def series(
        self, name: str, field: SeriesField, seconds: float | None = None,
        now: float | None = None,
    ) -> list[float | None]:
        """Oldest first; gaps stay None so a sparkline can show "unknown", not a dip."""
        cutoff = None if seconds is None else (time.time() if now is None else now) - seconds
        out: list[float | None] = []
        for sample in reversed(self._samples.get(name, ())):
            if cutoff is not None and sample.time < cutoff:
                break
            value = getattr(sample, field)
            out.append(None if value is None else float(value))
        out.reverse()
        return out

    def forget(self, name: str) -> None:
        self._samples.pop(name, None)


class HealthSubscription:
    def __init__(self, feed: HealthFeed, maxsize: int, machine: str | None) -> None:
        if maxsize < 1:
            raise ValueError("a health subscription needs room for at least 1 sample")
        self._feed = feed
        self._queue: asyncio.Queue[HealthSample] = asyncio.Queue(maxsize)
        self.machine = machine
        self.dropped = 0
        self.closed = False

    def _offer(self, sample: HealthSample) -> None:
        if self.machine is not None and sample.machine != self.machine:
            return
        if self._queue.full():
            self._queue.get_nowait()  # latest wins: a stale sample is worth less than a new one
            self.dropped += 1
        self._queue.put_nowait(sample)

    async def get(self) -> HealthSample:
        return await self._queue.get()

    def get_nowait(self) -> HealthSample | None:
        return None if self._queue.empty() else self._queue.get_nowait()

    def close(self) -> None:
        self.closed = True
        self._feed.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[HealthSample]:
        while not self.closed:
            yield await self.get()


class HealthFeed:
    """Where samples go: into the history, then to every subscriber. The sampler feeds
    one from its own rounds; a client of the daemon's API feeds one from the samples it
    streams, so both offer their readers the same history and subscriptions."""

    def __init__(self, history: HealthHistory | None = None) -> None:
        self.history = history if history is not None else HealthHistory()
        self._subscribers: list[HealthSubscription] = []

    def subscribe(self, *, maxsize: int = 256, machine: str | None = None) -> HealthSubscription:
        """`maxsize` below the number of machines means a slow reader of all machines
        may see only some of them after a backlog: size it accordingly or filter."""
        sub = HealthSubscription(self, maxsize, machine)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: HealthSubscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def publish(self, sample: HealthSample) -> None:
        self.history.add(sample)
        for sub in list(self._subscribers):
            sub._offer(sample)


class _Tracked:
    """Per-machine state kept between rounds: cpu_percent() measures since the previous
    call on the *same* Process object, so that object must live as long as the pid."""

    def __init__(self, handle: VmHandle, ssh_offset: int) -> None:
        self.pid = handle.pid
        self.process: psutil.Process | None = None
        self.primed = False
        self.round = ssh_offset
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(handle.pid)
            if abs(process.create_time() - handle.start_time) <= START_TIME_TOLERANCE:
                self.process = process  # else the pid already belongs to someone else

    def read(self) -> tuple[float | None, int | None]:
        process = self.process
        if process is None:
            return None, None
        try:
            if not process.is_running():  # also catches pid reuse (create time differs)
                raise psutil.NoSuchProcess(process.pid)
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:  # dead, just not reaped yet
                    raise psutil.NoSuchProcess(process.pid)
                cpu = process.cpu_percent(interval=None)
                rss = process.memory_info().rss
        except psutil.Error:
            self.process = None  # gone for good; a restart comes with a new handle
            return None, None
        first, self.primed = not self.primed, True
        return (None if first else cpu), rss


class HealthSampler:
    """`handles` is read afresh every round, so starting or stopping a machine needs no
    registration here; a machine missing from it is forgotten, history included."""

    def __init__(
        self, driver: HypervisorDriver, handles: Callable[[], Mapping[str, VmHandle]],
        interval: float = 1.0, ssh_every: int = 5, timeout: float = 0.8,
        history: HealthHistory | None = None, ssh_check: SshCheck | None = None,
    ) -> None:
        if ssh_every < 1:
            raise ValueError("ssh_every must be at least 1")
        self.driver = driver
        self.handles = handles
        self.interval = interval
        self.ssh_every = ssh_every
        self.timeout = timeout
        self.console_limit = CONSOLE_LOG_LIMIT
        #: without one, `ssh_ok` stays None: no probe that the guest would log
        self.ssh_check = ssh_check
        self.feed = HealthFeed(history)
        self.history = self.feed.history
        self._tracked: dict[str, _Tracked] = {}
        self._next_offset = 0

    def subscribe(self, *, maxsize: int = 256, machine: str | None = None) -> HealthSubscription:
        return self.feed.subscribe(maxsize=maxsize, machine=machine)

    def unsubscribe(self, sub: HealthSubscription) -> None:
        self.feed.unsubscribe(sub)

    async def run(self) -> None:
        """Sample, then sleep only what is left of the interval: rounds never overlap,
        and a slow round is followed by a prompt one rather than a catch-up burst."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.sample_once()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def sample_once(self) -> list[HealthSample]:
        handles = dict(self.handles())
        for name in [n for n in self._tracked if n not in handles]:
            del self._tracked[name]
            self.history.forget(name)
        samples = await asyncio.gather(*(self._sample(h) for h in handles.values()))
        for sample in samples:
            self.feed.publish(sample)
        return list(samples)

    async def _sample(self, handle: VmHandle) -> HealthSample:
        tracked = self._tracked.get(handle.name)
        if tracked is None or tracked.pid != handle.pid:
            # staggered, so that SSH checks spread evenly over the rounds
            tracked = self._tracked[handle.name] = _Tracked(handle, self._next_offset)
            self._next_offset = (self._next_offset + 1) % self.ssh_every
        now = time.time()
        cpu, rss = tracked.read()
        due = tracked.round % self.ssh_every == 0
        check_ssh = due and self.ssh_check is not None
        tracked.round += 1
        if due:  # the console log's size too: one stat, staggered like the SSH checks
            await self._rotate_console(handle)
        if check_ssh:
            memory, ssh_ok = await asyncio.gather(self._guest_memory(handle), self._ssh(handle))
        else:
            memory, ssh_ok = await self._guest_memory(handle), None
        return HealthSample(handle.name, now, cpu, rss, memory.total_bytes,
                            memory.free_bytes, ssh_ok)

    async def _guest_memory(self, handle: VmHandle) -> GuestMemory:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.driver.guest_memory(handle)
        except Exception:  # a hung or broken QMP is "unknown", never a failed round
            return GuestMemory(None, None)

    async def _rotate_console(self, handle: VmHandle) -> None:
        try:
            if handle.console_log.stat().st_size > self.console_limit:
                await asyncio.to_thread(rotate_if_large, handle.console_log,
                                        self.console_limit)
        except OSError:
            pass  # gone with its machine, or unreadable: nothing to rotate

    async def _ssh(self, handle: VmHandle) -> bool | None:
        check = self.ssh_check
        if check is None:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await check(handle, self.timeout)
        except TimeoutError:
            return False  # as a silent sshd would answer a banner probe
        except Exception:
            return None
