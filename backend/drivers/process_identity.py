"""Knowing that a pid is still *our* process, and being told when it exits.

A pid alone is not an identity: after a VM dies its pid can be handed to any program.
boxui records the pid together with the process start time and re-checks both (and the
command line) before it trusts or signals a process. Once trusted, the process is held
by a pidfd, which cannot be reused: signals go through it, and the event loop is told
through it when the process exits, with no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence

import psutil

from backend.state.process_liveness import START_TIME_TOLERANCE, same_process, start_time_of


def cmdline_of(pid: int) -> list[str] | None:
    """None once the process has exited, a zombie included: a killed QEMU whose parent
    has not reaped it yet is gone, not a different program (under load the reap can
    lag the kill by seconds). A process we may not read is some other user's: []."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return list(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return []


def verify_identity(
    pid: int, start_time: float, required_args: Sequence[str]
) -> str | None:
    """None if `pid` is provably the process we recorded, else the reason it is not."""
    current = start_time_of(pid)
    if current is None:
        return "process gone while boxui was down"
    if abs(current - start_time) > START_TIME_TOLERANCE:
        return f"pid reused by another program (pid {pid} started at a different time)"
    cmdline = cmdline_of(pid)
    if cmdline is None:
        return "process gone while boxui was down"
    missing = [arg for arg in required_args if arg not in cmdline]
    if missing:
        return f"pid reused by another program (pid {pid} is not this machine's QEMU)"
    return None


def watch_proven(pid: int, start_time: float,
                 required_args: Sequence[str]) -> PidWatch | str:
    """A pidfd for `pid` only if it is provably the process we recorded -- pid, start
    time and a command line with every one of `required_args` (the machine's name and
    its state dir's QMP socket) -- else the reason it is not. Checked again once the
    pidfd pins the process, so a pid reused in between is caught; every signal boxui
    sends goes through such a pidfd."""
    problem = verify_identity(pid, start_time, required_args)
    if problem is not None:
        return problem
    try:
        watch = PidWatch(pid)
    except ProcessLookupError:
        return "process gone while boxui was down"
    problem = verify_identity(pid, start_time, required_args)
    if problem is not None:
        watch.close()
        return problem
    return watch


class PidWatch:
    """A pidfd for one process: race-free signals and an awaitable exit."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        if not self._exited.done():
            self._exited.set_result(None)

    @property
    def exited(self) -> bool:
        return self._exited.done()

    async def wait(self) -> None:
        await asyncio.shield(self._exited)

    def send(self, sig: signal.Signals) -> bool:
        """Signal the process; False if it has already exited (never hits another pid)."""
        try:
            signal.pidfd_send_signal(self.fd, sig)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)


__all__ = [
    "START_TIME_TOLERANCE", "PidWatch", "cmdline_of", "same_process", "start_time_of",
    "verify_identity", "watch_proven",
]
