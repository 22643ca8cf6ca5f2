from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.errors import StateDirInUseError
from backend.state import supervisor_lock
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import SupervisorLock, lock_holder

#: how long a subprocess may take before the test fails (a loaded host included)
DEADLINE = 120.0

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from backend.state.engine import Engine
    async def main():
        engine = await Engine.open(Path(sys.argv[1]))
        print("held", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
    """
)

SECOND = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from backend.state.engine import Engine
    from backend.errors import BoxuiError
    try:
        asyncio.run(Engine.open(Path(sys.argv[1])))
    except BoxuiError as exc:
        print(exc)
        sys.exit(3)
    """
)


def start_holder(home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def never_sleeps(seconds: float) -> None:
    raise AssertionError(f"the lock waited ({seconds} s) although its holder is alive")


def test_second_lock_in_process_names_holder(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lock"
    with SupervisorLock(path):
        assert lock_holder(path) == os.getpid()
        # a live holder is named at once: not one wait, on the clock of no loaded host
        monkeypatch.setattr("backend.state.supervisor_lock.time.sleep", never_sleeps)
        with pytest.raises(StateDirInUseError, match=f"in use by boxui pid {os.getpid()}"):
            SupervisorLock(path).acquire()
        monkeypatch.undo()
    assert lock_holder(path) is None
    SupervisorLock(path).acquire()


def test_second_supervisor_gives_up_and_lock_survives_sigkill(tmp_path: Path) -> None:
    """The second gives up while the first holds on (it would never exit if it waited
    for the lock: the deadline, generous for a loaded host, fails it then); that it does
    so at once is the in-process test's, with no clock."""
    home = tmp_path / "home"
    holder = start_holder(home)
    try:
        dirs = open_state_dir(home)
        assert lock_holder(dirs.lock_file) == holder.pid
        second = subprocess.run([sys.executable, "-c", SECOND, str(home)],
                                capture_output=True, text=True, timeout=DEADLINE)
        assert second.returncode == 3
        assert second.stdout.strip() == f"state dir is in use by boxui pid {holder.pid}"
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(dirs.lock_file) is None
    again = start_holder(home)
    again.kill()
    again.wait()


def test_lock_holder_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_text("999\n")
    assert lock_holder(path) is None
    lock = SupervisorLock(path)
    lock.acquire()
    try:
        assert lock_holder(path) == os.getpid()
    finally:
        lock.release()


FORKING_OWNER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from backend.state.supervisor_lock import SupervisorLock
    lock = SupervisorLock(Path(sys.argv[1]))
    lock.acquire()
    child = os.fork()
    if child == 0:  # a child caught between fork and exec still holds the lock
        os.close(1), os.close(2)
        time.sleep(float(sys.argv[2]))
        os._exit(0)
    print(os.getpid(), child, flush=True)
    os._exit(0)  # the owner dies at once
    """
)


@pytest.mark.parametrize(("child_holds", "grace", "taken"), [(2.0, 60.0, True),
                                                             (600.0, 0.5, False)])
def test_a_dead_owners_lock_held_by_its_child_is_waited_for_briefly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child_holds: float, grace: float,
        taken: bool) -> None:
    """Within its grace the lock waits for the dead owner's child to let go (taken once
    it does); past it, it gives up naming the dead owner rather than waiting the child
    out. Each grace is far from what the child holds, so a loaded host decides nothing."""
    monkeypatch.setattr(supervisor_lock, "ORPHAN_GRACE", grace)
    path = tmp_path / "lock"
    owner = subprocess.run([sys.executable, "-c", FORKING_OWNER, str(path), str(child_holds)],
                           capture_output=True, text=True, timeout=DEADLINE)
    dead_pid, child = (int(word) for word in owner.stdout.split())
    lock = SupervisorLock(path)
    try:
        if taken:
            lock.acquire()
            lock.release()
        else:
            with pytest.raises(StateDirInUseError, match=f"pid {dead_pid}"):
                lock.acquire()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
