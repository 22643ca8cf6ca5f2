"""A cache that lets `boxui ls` answer for 1,000 machines without re-validating each one.

Importing pydantic alone costs more than half of `ls`'s time budget, so a listing whose
files have not changed is served from a cache of already-validated views. An entry is
used only when both files' stat signatures (inode, size, mtime, ctime) still match; an
atomic rewrite changes the inode and a hand edit changes the mtime, so a stale view is
never shown. Anything else goes through the full pydantic load and refreshes the entry.

The cache is derived data: losing it, or failing to write it, only costs time. This
module therefore imports nothing heavy; the full load (pydantic) is imported on a miss.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from backend.errors import BoxuiError, StorageError
from backend.state.atomic_write import atomic_write_bytes
from backend.state.names import NAME_PATTERN
from backend.state.process_liveness import unsupervised_state
from backend.state.state_dir import StateDir

#: 2: a supervised view of a running machine no longer needs recovery
CACHE_VERSION = 2
CACHE_NAME = ".ls-cache.json"
Signature = list[int] | None
View = dict[str, Any]


def _signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _names(dirs: StateDir) -> list[str]:
    try:
        with os.scandir(dirs.machines) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def _read_entries(cache_path: str) -> dict[str, Any]:
    try:
        with open(cache_path, "rb") as fh:
            cache = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION:
        return {}
    entries = cache.get("entries", {})
    return entries if isinstance(entries, dict) else {}


def _sigs(dirs: StateDir, name: str) -> list[Signature]:
    base = os.path.join(dirs.machines, name)
    return [_signature(os.path.join(base, "machine.toml")),
            _signature(os.path.join(base, "state.json"))]


def list_views(dirs: StateDir, *, supervised: bool) -> list[View]:
    """The JSON views of every machine, as `machine_view` would build them."""
    cache_path = os.path.join(dirs.machines, CACHE_NAME)
    entries = _read_entries(cache_path)
    key = "supervised" if supervised else "unsupervised"
    views: list[View] = []
    misses: list[tuple[int, str, Signature, Signature]] = []
    fresh: dict[str, Any] = {}
    for name in _names(dirs):
        sigs = _sigs(dirs, name)
        entry = entries.get(name)
        if (NAME_PATTERN.fullmatch(name) and isinstance(entry, dict)
                and entry.get("sigs") == sigs and key in entry):
            views.append(_live(entry[key]) if not supervised else entry[key])
            fresh[name] = entry
        else:
            misses.append((len(views), name, sigs[0], sigs[1]))
            views.append({})
    for index, name, spec_sig, record_sig in misses:
        both = _validated_views(dirs, name)
        views[index] = both[supervised]
        if NAME_PATTERN.fullmatch(name):
            fresh[name] = {"sigs": [spec_sig, record_sig],
                           "supervised": both[True], "unsupervised": both[False]}
    if misses or len(fresh) != len(entries):
        _write(dirs, cache_path, fresh)
    return views


def _live(view: View) -> View:
    """An unsupervised view of a running machine depends on its process, not its files:
    recompute that part (as `MachineStore.load` does) every time."""
    record = view.get("record") or {}
    if not view.get("needs_recovery") or record.get("persisted") != "running":
        return view
    state, reason = unsupervised_state(record.get("state", "stopped"), record.get("pid"),
                                       record.get("process_start_time"))
    return {**view, "state": state, "reason": reason}


def refresh(dirs: StateDir, names: list[str]) -> None:
    """Re-validate `names` and store their views, so the next `ls` stays on the fast path.

    The supervisor calls this after it writes a machine's files. An entry is stored only
    if the files did not change while they were being read; otherwise it is dropped and
    `ls` validates that machine itself.
    """
    cache_path = os.path.join(dirs.machines, CACHE_NAME)
    entries = _read_entries(cache_path)
    for name in names:
        entries.pop(name, None)
        before = _sigs(dirs, name)
        if before == [None, None]:
            continue  # deleted
        try:
            views = _validated_views(dirs, name)
        except BoxuiError:
            continue
        if _sigs(dirs, name) == before:
            entries[name] = {"sigs": before, "supervised": views[True],
                             "unsupervised": views[False]}
    _write(dirs, cache_path, entries)


def _validated_views(dirs: StateDir, name: str) -> dict[bool, View]:
    """The full load, supervised (True) and not (False): the slow path of a miss."""
    # imported here, not above: pydantic alone is over half of `ls`'s budget, and a
    # listing served wholly from the cache must not pay for it
    from backend.state.machine_store import MachineStore, machine_view

    view = machine_view(MachineStore(dirs).load(name, supervised=True))
    if view["state"] == "broken" or (view.get("record") or {}).get("persisted") != "running":
        return {True: view, False: view}
    # unsupervised, a running machine is not vouched for: what `MachineStore.load` would
    # say, without loading (and validating) it a second time
    return {True: view, False: _live({**view, "needs_recovery": True})}


def _write(dirs: StateDir, cache_path: str, entries: dict[str, Any]) -> None:
    # not durable: the supervisor refreshes this after every event, and two fsyncs each
    # time were most of the cost of re-adopting machines at start-up; a power cut can
    # only leave an old or unreadable cache, which is stat-checked or ignored
    with contextlib.suppress(StorageError, OSError):
        atomic_write_bytes(Path(cache_path),
                           orjson.dumps({"version": CACHE_VERSION, "entries": entries}),
                           durable=False)
