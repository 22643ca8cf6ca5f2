"""One supervisor per state dir.

Two supervisors would both try to adopt, restart or stop the same VMs. An `flock` on a
lock file is released by the kernel when its holder dies, even by SIGKILL, so a crash
never leaves a stale lock that needs manual cleanup; the PID written inside is only there
to tell the loser who won.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from backend.errors import StateDirError, StateDirInUseError
from backend.state.process_liveness import start_time_of

#: how long a lock whose recorded owner is dead may stay held before we give up
ORPHAN_GRACE = 0.5


class SupervisorLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or raise `StateDirInUseError` naming the holder's pid
        (within `ORPHAN_GRACE` when that pid is dead: see below)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateDirError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        deadline = time.monotonic() + ORPHAN_GRACE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_pid(fd)
                # A dead owner's lock can outlive it for a moment: a child it was forking
                # (a hypervisor) holds the descriptor until its exec closes it.
                if holder is not None and start_time_of(holder) is None \
                        and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                raise StateDirInUseError(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    @classmethod
    def inherit(cls, path: Path, fd: int) -> SupervisorLock:
        """Take over the lock held through `fd`, a descriptor of `path` inherited from
        the process handing supervision over (the app, when it quits while machines
        run): the lock passes with no moment in which nobody holds it.

        The flock belongs to the open file, so it is held already; but the kernel's lock
        table (what `lock_holder` reads) still names the process that took it, so it is
        converted to shared and back to exclusive to name this one. Each conversion is
        one step under the kernel's lock list (never unlocked in between, and reading the
        table waits for it); nothing else takes a shared lock on this file.
        """
        try:
            info = os.fstat(fd)
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            raise StateDirError(f"file descriptor {fd} is not open (it should be "
                                f"{path}, handed over with its lock)") from None
        try:
            wanted = path.stat()
        except OSError as exc:
            raise StateDirError(f"cannot open lock file {path}: {exc.strerror}") from exc
        if (info.st_dev, info.st_ino) != (wanted.st_dev, wanted.st_ino) \
                or mode != os.O_RDWR:
            raise StateDirError(f"file descriptor {fd} is not {path} opened for reading "
                                "and writing")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirInUseError(_read_pid(fd)) from None
        os.set_inheritable(fd, False)  # the hypervisors it starts must not hold it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        lock = cls(path)
        lock._fd = fd
        return lock

    @property
    def fd(self) -> int | None:
        """The descriptor that holds the lock (to hand it to a successor), if held."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> SupervisorLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(path: Path, proc_locks: Path = Path("/proc/locks")) -> int | None:
    """The pid of the live supervisor holding `path`, or None when nobody holds it.

    Read-only commands use this to know whether `state.json` is being kept current. It
    reads the kernel's lock table instead of probing the lock, because even a brief probe
    could make a supervisor starting at that instant believe the dir is taken.
    """
    try:
        info = path.stat()
        table = proc_locks.read_text()
    except OSError:
        return None
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (blocked waiters have "->")
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key == wanted:
            return pid
    return None


def _read_pid(fd: int) -> int | None:
    # The winner may be between truncate and write; retry briefly rather than report None.
    for _ in range(50):
        raw = os.pread(fd, 32, 0).strip()
        if raw.isdigit():
            return int(raw)
        time.sleep(0.005)
    return None
