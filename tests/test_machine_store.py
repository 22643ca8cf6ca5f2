from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import psutil
import pytest

from backend.errors import InvalidNameError, MachineExistsError
from backend.state.lifecycle import InstanceState, PersistedState
from backend.state.machine_store import MachineStore
from backend.state.runtime_record import RuntimeRecord, write_record
from backend.state.state_dir import StateDir, open_state_dir
from tests.conftest import spec


def test_create_writes_private_files(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    store.create(spec("web", vcpus=2))
    d = dirs.machine_dir("web")
    assert (d / "machine.toml").is_file() and (d / "state.json").is_file()
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "machine.toml").stat().st_mode & 0o777 == 0o600
    loaded = store.load("web")
    assert loaded.spec is not None and loaded.spec.vcpus == 2
    assert loaded.state is InstanceState.CREATING
    with pytest.raises(MachineExistsError):
        store.create(spec("web"))


@pytest.mark.parametrize("name", ["../x", "a/b", "-rf", "", "x" * 300])
def test_bad_name_creates_nothing(dirs: StateDir, tmp_path: Path, name: str) -> None:
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidNameError):
        MachineStore(dirs).exists(name)
    with pytest.raises(InvalidNameError):
        dirs.machine_dir(name)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_broken_machine_loads_with_reason_and_others_load(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    for name in ("a", "b", "c"):
        store.create(spec(name))
    bad = dirs.spec_path("b")
    bad.write_text('name = "b"\nvcpus = "lots"\n')
    before = digest(bad)
    machines = {m.name: m for m in store.load_all()}
    assert machines["b"].state is InstanceState.BROKEN
    assert machines["b"].reason is not None and "vcpus" in machines["b"].reason
    assert str(bad) in machines["b"].reason
    assert machines["a"].state is InstanceState.CREATING
    assert machines["c"].state is InstanceState.CREATING
    assert digest(bad) == before


def test_invalid_directory_name_is_listed_as_broken(dirs: StateDir) -> None:
    (dirs.machines / "Bad_Name").mkdir()
    [m] = MachineStore(dirs).load_all()
    assert m.name == "Bad_Name" and m.broken


def test_running_machine_is_not_trusted_without_supervisor(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    store.create(spec("vm"))
    write_record(dirs.record_path("vm"), RuntimeRecord(
        state=InstanceState.READY, persisted=PersistedState.RUNNING, pid=1234))
    unsupervised = store.load("vm")
    assert unsupervised.needs_recovery
    assert unsupervised.state is InstanceState.STOPPED
    assert unsupervised.reason and "process is gone" in unsupervised.reason
    # a live process with the recorded start time is shown as running, still unconfirmed
    me = psutil.Process()
    write_record(dirs.record_path("vm"), RuntimeRecord(
        state=InstanceState.READY, persisted=PersistedState.RUNNING, pid=me.pid,
        process_start_time=me.create_time()))
    alive = store.load("vm")
    assert alive.state is InstanceState.READY and alive.needs_recovery
    assert alive.reason and "running without a supervisor" in alive.reason
    # the same pid with another start time is a reused pid: not running
    write_record(dirs.record_path("vm"), RuntimeRecord(
        state=InstanceState.READY, persisted=PersistedState.RUNNING, pid=me.pid,
        process_start_time=me.create_time() - 100))
    assert store.load("vm").state is InstanceState.STOPPED
    supervised = store.load("vm", supervised=True)
    assert supervised.state is InstanceState.READY
    for persisted in (PersistedState.CREATED, PersistedState.STOPPED):
        write_record(dirs.record_path("vm"), RuntimeRecord(persisted=persisted,
                                                           state=InstanceState.STOPPED))
        assert not store.load("vm").needs_recovery


def _bump(root: str, rounds: int) -> None:
    store = MachineStore(open_state_dir(Path(root)))

    def inc(record: RuntimeRecord) -> None:
        record.restart_count += 1

    for _ in range(rounds):
        store.update_record("vm", inc)


def test_twenty_concurrent_writers_lose_nothing(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    store.create(spec("vm"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(str(dirs.root), 5)) for _ in range(20)]
    for p in procs:
        p.start()
    # each writer's exit is waited for, however long twenty interpreters take to start on
    # a loaded host; one that never ends fails the test (and is killed)
    deadline = time.monotonic() + 600
    try:
        for i, p in enumerate(procs):
            p.join(max(0.0, deadline - time.monotonic()))
            assert p.exitcode == 0, f"writer {i}: " + ("still running" if p.is_alive()
                                                      else f"exit {p.exitcode}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert store.load_record("vm").restart_count == 100
    assert [p for p in os.listdir(dirs.machine_dir("vm")) if "tmp" in p] == []


def test_leftovers_are_removed(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    store.create(spec("vm"))
    stray = dirs.machine_dir("vm") / ".boxui-tmp-state.json.abcd"
    stray.write_text("partial")
    trash = dirs.machines / ".deleting-old-1234"
    trash.mkdir()
    staging = dirs.machines / ".creating-half-5678"  # a create cut off by a crash
    staging.mkdir()
    (staging / "machine.toml").write_text('name = "half"\n')
    cache_temp = dirs.machines / ".boxui-tmp-.ls-cache.json.beef"
    cache_temp.write_text("{")
    service_temp = dirs.services / ".boxui-tmp-svc.json.472ae2fc"  # a service save cut off
    service_temp.write_text("{")
    assert store.names() == ["vm"]
    removed = store.remove_leftovers()
    assert {stray, trash, staging, cache_temp, service_temp} <= set(removed)
    assert not any(p.exists() for p in (stray, trash, staging, cache_temp, service_temp))
    assert store.load("vm").spec is not None


def test_create_refuses_a_taken_name_and_leaves_no_staging(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    store.create(spec("vm"))
    with pytest.raises(MachineExistsError):
        store.create(spec("vm"))
    assert sorted(p.name for p in dirs.machines.iterdir() if p.is_dir()) == ["vm"]


def test_delete_removes_directory(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    store.create(spec("vm"))
    store.delete("vm")
    assert not dirs.machine_dir("vm").exists()
    assert store.names() == []
