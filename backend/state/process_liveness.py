"""Is a recorded hypervisor process still the one we started? Read-only, and cheap.

Used where no supervisor is running (e.g. `boxui ls` after `boxui start` returned): a VM
keeps running without boxui, and the listing should say so rather than guess. The pid
must be alive *and* have the recorded start time; a reused pid does not count.
"""

from __future__ import annotations

import psutil

#: start times are read from /proc in clock ticks; two reads of one process agree exactly,
#: a different process would have to start within this window *and* reuse the pid
START_TIME_TOLERANCE = 0.05


def start_time_of(pid: int) -> float | None:
    """The start time of a live process; None if it is gone or only a zombie (dead,
    waiting to be reaped)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def same_process(pid: int, start_time: float) -> bool:
    current = start_time_of(pid)
    return current is not None and abs(current - start_time) <= START_TIME_TOLERANCE


def unsupervised_state(
    recorded_state: str, pid: int | None, start_time: float | None
) -> tuple[str, str]:
    """State and reason to show for a machine recorded as running while no supervisor
    runs: its recorded state if its process provably lives, else `stopped`."""
    if pid is not None and start_time is not None and same_process(pid, start_time):
        return recorded_state, (f"running without a supervisor (pid {pid}); "
                                "boxui re-adopts it when it starts")
    return "stopped", ("was running when its supervisor stopped; its process is gone "
                       "(marked crashed when boxui starts)")
