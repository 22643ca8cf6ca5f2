from __future__ import annotations

from pathlib import Path

import orjson

from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.listing_cache import CACHE_NAME, _sigs, list_views
from backend.state.machine_store import MachineStore, machine_view
from backend.state.runtime_record import RuntimeRecord, write_record
from backend.state.state_dir import StateDir
from tests.conftest import spec


def full(dirs: StateDir, supervised: bool) -> list[dict[str, object]]:
    return [machine_view(m) for m in MachineStore(dirs).load_all(supervised=supervised)]


def test_cache_matches_full_load_through_changes(dirs: StateDir) -> None:
    store = MachineStore(dirs)
    for name in ("a", "b", "c"):
        store.create(spec(name))
    for supervised in (True, False):
        assert list_views(dirs, supervised=supervised) == full(dirs, supervised)
    assert (dirs.machines / CACHE_NAME).exists()

    # a hand edit that keeps the size (same inode, new mtime) is seen
    path = dirs.spec_path("a")
    text = path.read_text().replace("vcpus = 1", "vcpus = 3")
    with open(path, "r+") as fh:
        fh.write(text)
    assert next(v for v in list_views(dirs, supervised=False) if v["name"] == "a")[
        "spec"]["vcpus"] == 3

    # an atomic rewrite of state.json is seen, in both views
    write_record(dirs.record_path("b"), RuntimeRecord(state=InstanceState.READY,
                                                      persisted=PersistedState.RUNNING))
    views = {v["name"]: v for v in list_views(dirs, supervised=False)}
    assert views["b"]["state"] == "stopped" and views["b"]["needs_recovery"]
    views = {v["name"]: v for v in list_views(dirs, supervised=True)}
    assert views["b"]["state"] == "ready"

    # a broken file, a deleted machine and a new one
    dirs.spec_path("c").write_text("nonsense = [")
    store.delete("a")
    store.create(spec("d"))
    for supervised in (True, False):
        assert list_views(dirs, supervised=supervised) == full(dirs, supervised)


def test_corrupt_or_unwritable_cache_only_costs_time(dirs: StateDir) -> None:
    MachineStore(dirs).create(spec("a"))
    (dirs.machines / CACHE_NAME).write_bytes(b"\0garbage")
    assert list_views(dirs, supervised=False) == full(dirs, False)
    # a cache that cannot be written (here: its path is taken by a directory)
    (dirs.machines / CACHE_NAME).unlink()
    (dirs.machines / CACHE_NAME).mkdir()
    assert list_views(dirs, supervised=False) == full(dirs, False)
    assert [v["name"] for v in list_views(dirs, supervised=False)] == ["a"]


async def test_supervisor_keeps_the_cache_warm(home: Path) -> None:
    engine = await Engine.open(home)
    try:
        await engine.create_machine(spec("vm"))
        await engine.transition("vm", Verb.BOOTING)
        entries = orjson.loads((engine.dirs.machines / CACHE_NAME).read_bytes())["entries"]
        assert entries["vm"]["sigs"] == _sigs(engine.dirs, "vm")
        assert entries["vm"]["supervised"]["state"] == "booting"
        assert list_views(engine.dirs, supervised=True) == full(engine.dirs, True)
        await engine.transition("vm", Verb.STOPPING)
        await engine.transition("vm", Verb.STOPPED)
        await engine.delete_machine("vm")
        entries = orjson.loads((engine.dirs.machines / CACHE_NAME).read_bytes())["entries"]
        assert "vm" not in entries
    finally:
        await engine.close()
