"""Is a live boxui supervising this state dir, and which pid? Read-only, and cheap.

`boxui ls` and `info` must say truthfully whether a supervisor watches a machine, without
asking it (no daemon may be running, and asking would cost a round trip). The kernel's
lock table names who took the state dir's flock, but that alone can mislead: a flock lives
as long as any descriptor of it, so a holder that died while a child it was forking still
had the descriptor leaves its pid in the table, and that pid may since name an unrelated
process. So a supervisor counts as live only when the process the lock table or the lock
file names is alive *and* still has the lock file open. A supervisor re-adopts its
machines before it serves anything, so a live one is watching every running machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from backend.state.supervisor_lock import lock_holder


def live_supervisor(lock_file: Path, proc: Path = Path("/proc")) -> int | None:
    """The pid of the live boxui holding `lock_file`, or None when none holds it."""
    holder = lock_holder(lock_file, proc / "locks")
    if holder is None:
        return None
    try:
        info = lock_file.stat()
    except OSError:
        return None
    wanted = (info.st_dev, info.st_ino)
    # the lock file names the pid that took the lock (or was handed it); the lock table
    # names the pid that took it: either, if it still has the file open
    for pid in dict.fromkeys(p for p in (_named_pid(lock_file), holder) if p is not None):
        if _has_open(proc / str(pid) / "fd", wanted):
            return pid
    return None


def _named_pid(lock_file: Path) -> int | None:
    try:
        raw = lock_file.read_bytes()[:32].strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _has_open(fd_dir: Path, wanted: tuple[int, int]) -> bool:
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False  # gone (or another user's: not a supervisor of our state dir)
    for fd in fds:
        try:
            st = os.stat(fd_dir / fd)
        except OSError:
            continue  # closed meanwhile, or not a file
        if (st.st_dev, st.st_ino) == wanted:
            return True
    return False
