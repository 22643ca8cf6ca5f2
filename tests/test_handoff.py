"""The app hands its running machines to a background daemon when it closes: the state
dir's lock passes from the app to the daemon with no moment in which nobody holds it."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from backend.errors import BoxuiError, StateDirError
from backend.state.event_log import read_log
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import SupervisorLock, lock_holder
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.run import hand_over_if_embedded
from tests.conftest import BOXUI, REPO, cli_env
from tests.daemon_helpers import kill_stand_ins
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel

FAKE_DAEMON = [sys.executable, "-m", "tests.fake_daemon"]

TAKE_OVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from backend.state.supervisor_lock import SupervisorLock
    SupervisorLock.inherit(Path(sys.argv[1]), int(sys.argv[2]))
    print("taken", flush=True)
    time.sleep(60)
    """
)


class HolderWatch:
    """Reads `lock_holder` as fast as it can in a thread, remembering every answer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.seen.append(lock_holder(self.path))

    def stop(self) -> list[int | None]:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        return self.seen


def stop_child(pid: int) -> None:
    """SIGTERM a daemon this process started, and reap it (within a bounded wait)."""
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], 30)[0]:
            os.kill(pid, signal.SIGKILL)
            assert select.select([pidfd], [], [], 10)[0], "daemon survived SIGKILL"
    finally:
        os.close(pidfd)
    os.waitpid(pid, 0)


def test_a_lock_passes_over_an_inherited_fd_without_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    lock = SupervisorLock(path)
    lock.acquire()
    assert lock.fd is not None
    watch = HolderWatch(path)
    child = subprocess.Popen([sys.executable, "-c", TAKE_OVER, str(path), str(lock.fd)],
                             pass_fds=[lock.fd], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "taken"
        lock.release()  # the child's copy keeps the lock
        assert lock_holder(path) == child.pid
        seen = watch.stop()
        assert None not in seen
        assert seen[0] == os.getpid() and seen[-1] == child.pid
        assert set(seen) == {os.getpid(), child.pid}
        assert path.read_text().strip() == str(child.pid)  # who holds it, for a loser
    finally:
        watch.stop()
        child.kill()
        child.wait(10)
    assert lock_holder(path) is None


def test_inherit_refuses_a_descriptor_that_is_not_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.lock"
    path.touch()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(StateDirError, match=r"is not .*supervisor\.lock"):
            SupervisorLock.inherit(path, other)
    finally:
        os.close(other)
    with pytest.raises(StateDirError, match="file descriptor 987 is not open"):
        SupervisorLock.inherit(path, 987)


@pytest.mark.parametrize("fd", ["987", "0"])
def test_the_daemons_lock_fd_option_is_checked(home: Path, fd: str) -> None:
    out = subprocess.run([*BOXUI, "daemon", "--lock-fd", fd], capture_output=True,
                         text=True, env=cli_env(home), timeout=60)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    if fd == "0":  # a usage error
        assert out.returncode == 2 and "Invalid value for '--lock-fd'" in lines[0]
    else:
        assert out.returncode == 1
        assert lines[0].startswith("boxui: file descriptor 987 is not open"), lines
    assert lock_holder(open_state_dir(home).lock_file) is None


def embedded(home: Path, driver: FakeDriver, command: list[str]) -> EmbeddedBackend:
    return EmbeddedBackend(BackendOptions(
        home=home, driver_factory=lambda: driver,
        boot_files_factory=lambda _images: FakeBootFiles(), accel_for=fixed_accel,
        sample_health=False, hand_over_on_close=True, daemon_command=command))


async def close_app_with(backend: EmbeddedBackend, names: list[str]) -> Path:
    """Run the app's backend, start `names`, and close it as the app does on quit."""
    task = asyncio.create_task(backend.run())
    try:
        async with asyncio.timeout(30):
            await backend.ready.wait()
            for name in names:
                await backend.create(MachineSpec(name=name))
        lock_file = backend.engine.dirs.lock_file
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return lock_file


async def test_the_app_hands_its_running_machines_to_a_daemon(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    driver = FakeDriver()
    backend = embedded(home, driver, FAKE_DAEMON)
    daemon_pid = None
    try:
        lock_file = await close_app_with(backend, ["web", "db"])
        assert lock_holder(lock_file) == os.getpid()  # held on, the API stopped
        assert not open_state_dir(home).api_socket.exists()
        watch = HolderWatch(lock_file)
        try:
            message = await asyncio.wait_for(asyncio.to_thread(backend.hand_over), 60)
        finally:
            seen = watch.stop()
        assert message is not None
        found = re.fullmatch(r"boxui daemon pid (\d+) now supervises 2 running machines",
                             message)
        assert found, message
        daemon_pid = int(found[1])
        assert None not in seen
        assert seen[0] == os.getpid() and seen[-1] == daemon_pid
        assert set(seen) == {os.getpid(), daemon_pid}
        assert lock_holder(lock_file) == daemon_pid
        log = read_log(open_state_dir(home).event_log).events
        adopted = {e.subject for e in log if e.type.endswith(".adopted")}
        assert adopted == {"web", "db"}
        assert driver.starts == {"web": 1, "db": 1}  # adopted, not started again
        out = subprocess.run([*BOXUI, "ls", "--json"], capture_output=True, text=True,
                             env=cli_env(home), timeout=60)
        assert '"ready"' in out.stdout and "without a supervisor" not in out.stdout
    finally:
        if daemon_pid is not None:
            stop_child(daemon_pid)
        driver.kill_all()
        kill_stand_ins(home)


async def test_quitting_the_app_keeps_the_lock_for_the_hand_over(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the app itself: after it quits (its backend's task is cancelled by
    Textual), the lock is still the app's until `boxui` hands it over."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    driver = FakeDriver()
    backend = embedded(home, driver, FAKE_DAEMON)
    app = BoxuiApp(backend)
    daemon_pid = None
    try:
        async with app.run_test() as pilot:
            async with asyncio.timeout(30):
                await backend.ready.wait()
                await backend.create(MachineSpec(name="web"))
            lock_file = backend.engine.dirs.lock_file
            await pilot.press("q")
        assert lock_holder(lock_file) == os.getpid()
        message = await asyncio.wait_for(asyncio.to_thread(hand_over_if_embedded, backend), 60)
        assert message is not None
        found = re.fullmatch(r"boxui daemon pid (\d+) now supervises 1 running machine",
                             message)
        assert found, message
        daemon_pid = int(found[1])
        assert lock_holder(lock_file) == daemon_pid
    finally:
        if daemon_pid is not None:
            stop_child(daemon_pid)
        driver.kill_all()
        kill_stand_ins(home)


async def test_with_nothing_running_the_app_just_lets_go(home: Path) -> None:
    backend = embedded(home, FakeDriver(), ["/nonexistent/boxui-daemon"])
    lock_file = await close_app_with(backend, [])
    assert backend.hand_over() is None
    assert lock_holder(lock_file) is None


async def test_a_failed_hand_over_says_so_and_leaves_machines_running(home: Path) -> None:
    driver = FakeDriver()
    backend = embedded(home, driver, ["/nonexistent/boxui-daemon"])
    try:
        lock_file = await close_app_with(backend, ["web"])
        with pytest.raises(BoxuiError, match=r"^could not hand the running machines to a "
                           r"background daemon \(cannot start the boxui daemon: .*\); "
                           "they keep running"):
            backend.hand_over()
        assert lock_holder(lock_file) is None  # the next supervisor re-adopts them
        assert [pid for pid in driver.spawned if _alive(pid)], "the machine was stopped"
    finally:
        driver.kill_all()
        kill_stand_ins(home)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
