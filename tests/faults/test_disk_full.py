"""Item 5: disk full during a spec save, a state save and a log append. The old file is
intact, no temp file is left, the user sees one clear error, and work continues once
space is freed. ENOSPC is injected into the writes of one file at a time; the CLI is
also run on a real, small tmpfs that is filled up."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from backend.errors import StorageError
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from backend.state.state_dir import StateDir, open_state_dir
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import BOXUI, cli_env, spec, stop_background_daemons
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.faults.conftest import FaultRecorder
from tests.faults.support import disk_consistency_problems, hypervisors

ENOSPC_TEXT = "no space left on device"


class DiskFull:
    """Make os.write and os.fsync fail with ENOSPC for files whose name contains
    `needle` (a temp file is named after its target), as a full disk would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.needle: str | None = None
        self.hits = 0
        real_write, real_fsync = os.write, os.fsync

        def target(fd: int) -> str:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return ""

        def write(fd: int, data: bytes) -> int:
            if self.needle and self.needle in target(fd):
                self.hits += 1
                real_write(fd, bytes(data)[: max(1, len(data) // 2)])  # a partial write
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if self.needle and self.needle in target(fd):
                self.hits += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)

    @contextlib.contextmanager
    def full(self, needle: str) -> Iterator[None]:
        self.needle = needle
        try:
            yield
        finally:
            self.needle = None


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskFull:
    return DiskFull(monkeypatch)


def temps(dirs: StateDir) -> list[Path]:
    return [p for p in dirs.root.rglob("*") if ".boxui-tmp-" in p.name or
            p.name.startswith(".creating-")]


def one_clear_line(exc: BaseException, path_part: str) -> None:
    text = str(exc)
    assert "\n" not in text and ENOSPC_TEXT in text.lower() and path_part in text, text


@pytest.fixture
async def running(engine: Engine) -> AsyncIterator[Supervisor]:
    driver = FakeDriver()
    await engine.create_machine(spec("vm"))
    await engine.create_machine(spec("keep"))
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=fixed_accel)
    try:
        async with sup.running(recover=recover_machines):
            yield sup
    finally:
        driver.kill_all()


@pytest.mark.fault("5. disk full: spec save")
async def test_spec_save(running: Supervisor, disk: DiskFull, fault: FaultRecorder) -> None:
    store, dirs = running.engine.store, running.engine.dirs
    before = dirs.spec_path("vm").read_bytes()
    bigger = store.load_spec("vm").model_copy(update={"vcpus": 2})
    with disk.full("machine.toml"), pytest.raises(StorageError) as caught:
        store.save_spec(bigger)
    assert disk.hits
    one_clear_line(caught.value, "machine.toml")
    assert "the previous file is unchanged" in str(caught.value)
    assert dirs.spec_path("vm").read_bytes() == before and temps(dirs) == []
    store.save_spec(bigger)  # space is back
    assert store.load_spec("vm").vcpus == 2
    await running.start_machine("vm")
    assert running.engine.projection.state_of("vm") is InstanceState.READY
    fault.cycle()


@pytest.mark.fault("5. disk full: state save")
async def test_state_save_during_start(running: Supervisor, disk: DiskFull,
                                       fault: FaultRecorder) -> None:
    engine, dirs = running.engine, running.engine.dirs
    before = dirs.record_path("vm").read_bytes()
    with disk.full("state.json"), pytest.raises(StorageError) as caught:
        await running.start_machine("vm")
    one_clear_line(caught.value, "state.json")
    assert dirs.record_path("vm").read_bytes() == before and temps(dirs) == []
    assert hypervisors(dirs.root).get("vm", 0) == 0, "nothing may run after the error"
    assert engine.projection.state_of("vm") not in (InstanceState.BOOTING,
                                                    InstanceState.READY)
    await running.start_machine("vm")  # space is back: work continues
    assert engine.projection.state_of("vm") is InstanceState.READY
    assert hypervisors(dirs.root)["vm"] == 1
    assert engine.projection.state_of("keep") is InstanceState.STOPPED
    fault.cycle()


@pytest.mark.fault("5. disk full: state save")
async def test_state_save_during_stop(running: Supervisor, disk: DiskFull,
                                      fault: FaultRecorder) -> None:
    engine, dirs = running.engine, running.engine.dirs
    await running.start_machine("vm")
    before = dirs.record_path("vm").read_bytes()
    with disk.full("state.json"), pytest.raises(StorageError) as caught:
        await running.stop_machine("vm")
    one_clear_line(caught.value, "state.json")
    assert dirs.record_path("vm").read_bytes() == before and temps(dirs) == []
    await running.stop_machine("vm")  # space is back: the stop goes through
    assert engine.projection.state_of("vm") is InstanceState.STOPPED
    assert hypervisors(dirs.root).get("vm", 0) == 0
    await running.start_machine("vm")
    assert hypervisors(dirs.root)["vm"] == 1
    fault.cycle()


@pytest.mark.fault("5. disk full: log append")
async def test_log_append_during_start_and_create(running: Supervisor, disk: DiskFull,
                                                  fault: FaultRecorder) -> None:
    engine, dirs = running.engine, running.engine.dirs
    log_before = dirs.event_log.read_bytes()
    record_before = dirs.record_path("vm").read_bytes()
    with disk.full("log.jsonl"):
        with pytest.raises(StorageError) as caught:
            await running.start_machine("vm")
        one_clear_line(caught.value, "log.jsonl")
        with pytest.raises(StorageError):
            await engine.create_machine(spec("new"))
    assert dirs.event_log.read_bytes() == log_before
    assert dirs.record_path("vm").read_bytes() == record_before and temps(dirs) == []
    assert engine.projection.state_of("vm") is InstanceState.STOPPED
    assert hypervisors(dirs.root).get("vm", 0) == 0
    await running.start_machine("vm")
    assert engine.projection.state_of("vm") is InstanceState.READY
    fault.cycle()
    await engine.close()
    # a new supervisor sees exactly what the log says, including `new` (its files were
    # written before the log refused it, so it is registered as found on disk)
    engine2 = await Engine.open(engine.dirs.root)
    try:
        assert engine2.projection.state_of("vm") is InstanceState.READY
        assert engine2.startup_notes == []
    finally:
        await engine2.close()
    assert disk_consistency_problems(open_state_dir(dirs.root)) == []



@pytest.mark.fault("5. disk full: log append")
async def test_log_append_during_delete(running: Supervisor, disk: DiskFull,
                                        fault: FaultRecorder) -> None:
    """The directory is moved aside before the delete is logged; a log that refuses the
    event puts it back, so the machine is neither half-deleted nor lost."""
    engine, dirs = running.engine, running.engine.dirs
    spec_before = dirs.spec_path("vm").read_bytes()
    with disk.full("log.jsonl"):
        with pytest.raises(StorageError) as caught:
            await running.delete_machine("vm")
        one_clear_line(caught.value, "log.jsonl")
    assert dirs.spec_path("vm").read_bytes() == spec_before
    assert engine.projection.state_of("vm") is InstanceState.STOPPED
    assert [p.name for p in dirs.machines.iterdir() if p.name.startswith(".deleting")] == []
    await running.delete_machine("vm")
    assert not dirs.machine_dir("vm").exists() and engine.projection.state_of("vm") is None
    fault.cycle()

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 512):  # big blocks, then the last few small ones
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    return filler


@pytest.mark.fault("5. disk full: CLI on a full tmpfs")
def test_cli_on_a_full_tmpfs(tmpfs: Path, fault: FaultRecorder) -> None:
    home = tmpfs / "home"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                              env=cli_env(home), timeout=60)

    try:
        _fill_and_create(tmpfs, home, run)
    finally:
        stop_background_daemons(home)  # it keeps files open on the tmpfs
    fault.cycle()


def _fill_and_create(tmpfs: Path, home: Path,
                     run: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The first create starts a daemon; the second, on the full disk, fails in it."""
    assert run("create", "--no-start", "first").returncode == 0
    dirs = open_state_dir(home)
    files = {p: p.read_bytes() for p in dirs.root.rglob("*")
             if p.is_file() and p.name != "supervisor.lock" and not p.name.startswith(".ls")
             and p.parent.name != "logs"}  # the daemon's own log may grow
    filler = fill(tmpfs)
    out = run("create", "--no-start", "second")
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and ENOSPC_TEXT in lines[0].lower(), out.stderr
    print("\n" + lines[0])
    assert "Traceback" not in out.stderr
    listed = run("ls")
    assert listed.returncode == 0 and "first" in listed.stdout, listed
    assert {p: p.read_bytes() for p in files} == files
    assert temps(dirs) == []
    filler.unlink()
    out = run("create", "--no-start", "second")
    assert out.returncode == 0, out.stderr
    assert "second" in run("ls").stdout
    assert disk_consistency_problems(dirs) == []
