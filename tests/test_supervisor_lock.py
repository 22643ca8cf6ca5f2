from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend.errors import StateDirInUseError
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import SupervisorLock, lock_holder

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


def test_second_lock_in_process_names_holder(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with SupervisorLock(path):
        assert lock_holder(path) == os.getpid()
        with pytest.raises(StateDirInUseError, match=f"in use by boxui pid {os.getpid()}"):
            SupervisorLock(path).acquire()
    assert lock_holder(path) is None
    SupervisorLock(path).acquire()


def test_second_supervisor_exits_fast_and_lock_survives_sigkill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    holder = start_holder(home)
    try:
        dirs = open_state_dir(home)
        assert lock_holder(dirs.lock_file) == holder.pid
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-c", SECOND, str(home)],
                                capture_output=True, text=True, timeout=10)
        elapsed = time.monotonic() - started
        assert second.returncode == 3
        assert second.stdout.strip() == f"state dir is in use by boxui pid {holder.pid}"
        assert elapsed < 1.0, f"second supervisor took {elapsed:.2f}s to give up"
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
    if os.fork() == 0:  # a child caught between fork and exec still holds the lock
        os.close(1), os.close(2)
        time.sleep(float(sys.argv[2]))
        os._exit(0)
    print(os.getpid(), flush=True)
    os._exit(0)  # the owner dies at once
    """
)


@pytest.mark.parametrize(("child_holds", "taken"), [(0.2, True), (3.0, False)])
def test_a_dead_owners_lock_held_by_its_child_is_waited_for_briefly(
        tmp_path: Path, child_holds: float, taken: bool) -> None:
    path = tmp_path / "lock"
    owner = subprocess.run([sys.executable, "-c", FORKING_OWNER, str(path), str(child_holds)],
                           capture_output=True, text=True, timeout=10)
    dead_pid = int(owner.stdout.strip())
    lock = SupervisorLock(path)
    started = time.monotonic()
    if taken:
        lock.acquire()
        lock.release()
    else:
        with pytest.raises(StateDirInUseError, match=f"pid {dead_pid}"):
            lock.acquire()
    assert time.monotonic() - started < 1.0
