"""The lock that makes starting (and idly stopping) the background daemon one at a time.

Ten CLIs that find no daemon at the same moment must end with one daemon: each takes
this flock before it looks again and starts one, so all but the first find the first's
daemon serving when their turn comes. Waiting for the lock is being told (the kernel
wakes the waiter when the holder lets go), not polling. A daemon that exits because it
is idle takes the same lock first and keeps it until its process is gone, so a CLI never
talks to a daemon that is on its way out, and never starts a second one beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.state_dir import StateDir

#: longer than a daemon may take to start (`spawn.READY_TIMEOUT`) or to stop
WAIT_TIMEOUT = 90.0


def start_lock_path(dirs: StateDir) -> Path:
    dirs.run.mkdir(mode=0o700, exist_ok=True)
    return dirs.run / "daemon-start.lock"


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BoxuiError(f"cannot open {path}: {exc.strerror}") from None


def try_start_lock(dirs: StateDir) -> int | None:
    """The lock's fd if it was free (the caller closes it to let go), else None."""
    fd = _open(start_lock_path(dirs))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def start_lock(dirs: StateDir, timeout: float = WAIT_TIMEOUT) -> Iterator[None]:
    """Hold the start lock, waiting at most `timeout` seconds for another holder."""
    fd = _open(start_lock_path(dirs))
    if not _wait_for_flock(fd, timeout):
        raise BoxuiError(f"another boxui has been starting or stopping the daemon for "
                         f"{timeout:.0f} s without finishing; try again")
    try:
        yield
    finally:
        os.close(fd)


def _wait_for_flock(fd: int, timeout: float) -> bool:
    """Lock `fd`; False (and `fd` is no longer the caller's) when `timeout` passed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    # a blocking flock cannot time out by itself: it waits in a thread, which closes the
    # fd itself if it gets the lock only after the caller gave up
    state = threading.Condition()
    outcome: list[str] = []

    def wait() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            result = "locked"
        except OSError:
            result = "failed"
        with state:
            if outcome == ["abandoned"]:
                os.close(fd)
                return
            outcome.append(result)
            state.notify()

    threading.Thread(target=wait, name="daemon-start-lock", daemon=True).start()
    with state:
        if not state.wait_for(lambda: bool(outcome), timeout):
            outcome.append("abandoned")
            return False
    if outcome == ["failed"]:
        os.close(fd)
        raise BoxuiError("cannot take the daemon start lock")
    return True
