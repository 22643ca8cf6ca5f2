"""A graceful stop that always ends: ACPI, QMP `quit`, SIGTERM, SIGKILL, each on a deadline.

A hung hypervisor (a deadlock, a stalled disk, a SIGSTOP) answers neither the power
button nor QMP, and a SIGSTOPped process does not act on SIGTERM either; only SIGKILL
ends it. So each step gets its own timeout and the next, harsher step follows when it
passes, as `virsh shutdown` then `virsh destroy` would. Signals go through the process's
pidfd, opened when its identity was proven, so they can never reach another program.

What the event says must be what happened: the step in progress when the process exited
is only credited if the driver confirms it (QEMU's SHUTDOWN reason, the stand-in's own
record); an exit nobody here caused reads `process exited (not by boxui)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from backend.drivers.base import StopTimeouts
from backend.drivers.errors import DriverError
from backend.drivers.process_identity import PidWatch

Step = Literal["acpi", "quit", "term", "kill"]
Action = Callable[[], Awaitable[object]]
#: after an action fails outright (QMP closed), how long to still wait for the exit
FAILED_ACTION_GRACE = 1.0
NOT_BY_BOXUI = "process exited (not by boxui)"


@dataclass(frozen=True)
class Ending:
    """The step in progress when the process exited (None: it was gone before any), and
    why boxui had moved on to that step (None: it was the first)."""

    step: Step | None
    after: str | None

    def describe(self, confirmed: bool) -> str:
        if self.step is None or not confirmed:
            return NOT_BY_BOXUI
        what = {"acpi": "powered off (ACPI)", "quit": "quit over QMP",
                "term": "killed (SIGTERM)", "kill": "killed (SIGKILL)"}[self.step]
        return f"{what} after {self.after}" if self.after else what


async def escalate(watch: PidWatch, timeouts: StopTimeouts, *,
                   powerdown: Action | None, quit: Action | None) -> Ending:
    """Run the steps until the process exits; `powerdown` and `quit` are None when there
    is no way to send them (no QMP connection). Raises `DriverError` only if the process
    outlives SIGKILL by `timeouts.kill` (stuck in the kernel)."""
    after: str | None = None
    gentle: tuple[tuple[Step, Action | None, float, str], ...] = (
        ("acpi", powerdown, timeouts.acpi, f"ACPI timeout ({timeouts.acpi:g} s)"),
        ("quit", quit, timeouts.quit, f"QMP quit timeout ({timeouts.quit:g} s)"),
    )
    for step, action, limit, label in gentle:
        if watch.exited:
            return Ending(None, None)
        if action is None:
            after = after or "no QMP connection"
            continue
        if await _attempt(watch, action, limit):
            return Ending(step, after)
        after = label
    harsh: tuple[tuple[Step, signal.Signals, float, str], ...] = (
        ("term", signal.SIGTERM, timeouts.term, f"SIGTERM timeout ({timeouts.term:g} s)"),
        ("kill", signal.SIGKILL, timeouts.kill, ""),
    )
    for step, sig, limit, label in harsh:
        if watch.exited or not watch.send(sig):
            return Ending(None, None)
        if await _exits_within(watch, limit):
            return Ending(step, after)
        after = label
    raise DriverError(f"pid {watch.pid} is still alive {timeouts.kill:g} s after SIGKILL "
                      "(stuck in the kernel?); stop it again later")


async def kill_now(watch: PidWatch, timeout: float) -> None:
    """SIGKILL and wait for the exit; raise `DriverError` if it outlives `timeout`."""
    watch.send(signal.SIGKILL)
    if not await _exits_within(watch, timeout):
        raise DriverError(f"pid {watch.pid} is still alive {timeout:g} s after SIGKILL "
                          "(stuck in the kernel?)")


async def _attempt(watch: PidWatch, action: Action, limit: float) -> bool:
    """Send one gentle request and give the process `limit` seconds (sending included:
    a hung QMP never answers) to exit; an exit (a `stop --force` under this stop, say)
    ends the wait at once, even while the request is still unanswered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    sending = asyncio.ensure_future(action())
    exited = asyncio.ensure_future(watch.wait())
    try:
        await asyncio.wait({sending, exited}, timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)
        if exited.done() or not sending.done():
            return watch.exited
        if sending.exception() is not None:  # QMP closed or refused: the exit may be
            deadline = min(deadline, loop.time() + FAILED_ACTION_GRACE)  # under way
        return await _exits_within(watch, deadline - loop.time())
    finally:
        sending.cancel()
        exited.cancel()


async def _exits_within(watch: PidWatch, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await watch.wait()
    return watch.exited
