from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from backend.state import listing_cache
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.listing_cache import (
    CACHE_NAME,
    JOURNAL_NAME,
    _read_entries,
    _sigs,
    list_views,
    refresh,
)
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
        entries = _read_entries(str(engine.dirs.machines / CACHE_NAME))
        assert entries["vm"]["sigs"] == _sigs(engine.dirs, "vm")
        assert entries["vm"]["supervised"]["state"] == "booting"
        assert list_views(engine.dirs, supervised=True) == full(engine.dirs, True)
        await engine.transition("vm", Verb.STOPPING)
        await engine.transition("vm", Verb.STOPPED)
        await engine.delete_machine("vm")
        entries = _read_entries(str(engine.dirs.machines / CACHE_NAME))
        assert "vm" not in entries
    finally:
        await engine.close()


def test_a_change_to_one_machine_is_journalled_not_rewritten(dirs: StateDir) -> None:
    """The supervisor's refresh after one machine's change appends that machine's entry
    (an exec does this twice); the cache of every machine is left as it is."""
    store = MachineStore(dirs)
    for name in ("a", "b"):
        store.create(spec(name))
    list_views(dirs, supervised=True)
    cache = dirs.machines / CACHE_NAME
    before = cache.stat()
    write_record(dirs.record_path("a"), RuntimeRecord(state=InstanceState.READY,
                                                      persisted=PersistedState.RUNNING))
    refresh(dirs, ["a"])
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    journal = (dirs.machines / JOURNAL_NAME).read_bytes().splitlines()
    assert [orjson.loads(line)["name"] for line in journal] == ["a"]
    assert _read_entries(str(cache))["a"]["sigs"] == _sigs(dirs, "a")
    views = list_views(dirs, supervised=True)
    assert views == full(dirs, True)
    assert cache.stat().st_ino == before.st_ino  # a hit: nothing to write
    # a torn last line (a writer killed mid-append) is skipped, the rest still applies
    with open(dirs.machines / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"version": 2, "name": "b", "entry": {"si')
    assert _read_entries(str(cache))["a"]["sigs"] == _sigs(dirs, "a")
    assert list_views(dirs, supervised=True) == full(dirs, True)
    # a deleted machine's entry goes from the journal at once
    store.delete("b")
    refresh(dirs, ["b"])
    assert "b" not in _read_entries(str(cache))


def test_the_journal_is_folded_in_once_it_grows(dirs: StateDir,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing_cache, "JOURNAL_MIN_LIMIT", 4096)
    store = MachineStore(dirs)
    store.create(spec("a"))
    list_views(dirs, supervised=True)
    journal = dirs.machines / JOURNAL_NAME
    sizes = []
    for n in range(12):
        write_record(dirs.record_path("a"), RuntimeRecord(
            state=InstanceState.READY if n % 2 else InstanceState.BUSY,
            persisted=PersistedState.RUNNING))
        refresh(dirs, ["a"])
        sizes.append(journal.stat().st_size)
    assert 0 in sizes  # folded in (and emptied) at least once
    assert max(sizes) <= 4096 + 2 * sizes[0]
    entries = orjson.loads((dirs.machines / CACHE_NAME).read_bytes())["entries"]
    assert set(entries) == {"a"}
    assert _read_entries(str(dirs.machines / CACHE_NAME))["a"]["sigs"] == _sigs(dirs, "a")
    assert list_views(dirs, supervised=True) == full(dirs, True)


def test_a_stale_journal_line_only_costs_a_validation(dirs: StateDir) -> None:
    """A line older than the files (lost race with a fold) never shows a stale view."""
    store = MachineStore(dirs)
    store.create(spec("a"))
    list_views(dirs, supervised=True)
    refresh(dirs, ["a"])
    stale = (dirs.machines / JOURNAL_NAME).read_bytes()
    write_record(dirs.record_path("a"), RuntimeRecord(state=InstanceState.READY,
                                                      persisted=PersistedState.RUNNING))
    refresh(dirs, ["a"])
    with open(dirs.machines / JOURNAL_NAME, "ab") as fh:
        fh.write(stale)  # now the last word on "a", and out of date
    views = list_views(dirs, supervised=True)
    assert views == full(dirs, True)
    assert views[0]["state"] == "ready"


_CHURN = """
import sys, time
from pathlib import Path
from backend.state import listing_cache
from backend.state.lifecycle import InstanceState, PersistedState
from backend.state.runtime_record import RuntimeRecord, write_record
from backend.state.state_dir import StateDir

listing_cache.JOURNAL_MIN_LIMIT = 2048  # fold often: each fold rewrites the cache
dirs = StateDir(Path(sys.argv[1]))
print("go", flush=True)
deadline, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < deadline:
    write_record(dirs.record_path("a"), RuntimeRecord(
        state=InstanceState.READY if n % 2 else InstanceState.BUSY,
        persisted=PersistedState.RUNNING))
    listing_cache.refresh(dirs, ["a"])
    n += 1
print(n, flush=True)
"""


def test_two_processes_writing_the_cache_never_tear_it(dirs: StateDir) -> None:
    """A daemon (here a child process) journals and folds while a CLI `ls` (this one)
    lists and rewrites the cache: every read of the cache file is whole, machines that do
    not change always list as the full load does, and once the writer stops the listing
    is the full load's again (nothing is stale for good)."""
    store = MachineStore(dirs)
    for name in ("a", "b", "c"):
        store.create(spec(name))
    steady = {v["name"]: v for v in full(dirs, True) if v["name"] != "a"}
    child = subprocess.Popen([sys.executable, "-c", _CHURN, str(dirs.root), "1.5"],
                             stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"go\n"
        listings = 0
        while child.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                raw = (dirs.machines / CACHE_NAME).read_bytes()
                assert orjson.loads(raw)["version"] == listing_cache.CACHE_VERSION
            views = {v["name"]: v for v in list_views(dirs, supervised=True)}
            assert {n: views[n] for n in steady} == steady
            assert views["a"]["name"] == "a"
            listings += 1
        assert child.wait(10) == 0
        assert int(child.stdout.readline()) > 10 and listings > 10, "they did overlap"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
    assert list_views(dirs, supervised=True) == full(dirs, True)
    assert list_views(dirs, supervised=False) == full(dirs, False)
