"""A cache that lets `boxui ls` answer for 1,000 machines without re-validating each one.

Importing pydantic alone costs more than half of `ls`'s time budget, so a listing whose
files have not changed is served from a cache of already-validated views. An entry is
used only when both files' stat signatures (inode, size, mtime, ctime) still match; an
atomic rewrite changes the inode and a hand edit changes the mtime, so a stale view is
never shown. Anything else goes through the full pydantic load and refreshes the entry.

The cache is derived data: losing it, or failing to write it, only costs time. This
module therefore imports nothing heavy; the full load is imported on a miss.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson

from backend.names import NAME_PATTERN
from backend.state_dir import StateDir

CACHE_VERSION = 1
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


def list_views(dirs: StateDir, *, supervised: bool) -> list[View]:
    """The JSON views of every machine, as `machine_view` would build them."""
    cache_path = os.path.join(dirs.machines, CACHE_NAME)
    try:
        with open(cache_path, "rb") as fh:
            cache = orjson.loads(fh.read())
        if cache.get("version") != CACHE_VERSION:
            cache = {}
    except (OSError, orjson.JSONDecodeError):
        cache = {}
    entries: dict[str, Any] = cache.get("entries", {}) if isinstance(cache, dict) else {}
    key = "supervised" if supervised else "unsupervised"
    views: list[View] = []
    misses: list[tuple[int, str, Signature, Signature]] = []
    fresh: dict[str, Any] = {}
    for name in _names(dirs):
        base = os.path.join(dirs.machines, name)
        sigs = (_signature(os.path.join(base, "machine.toml")),
                _signature(os.path.join(base, "state.json")))
        entry = entries.get(name)
        if (NAME_PATTERN.fullmatch(name) and isinstance(entry, dict)
                and entry.get("sigs") == list(sigs) and key in entry):
            views.append(entry[key])
            fresh[name] = entry
        else:
            misses.append((len(views), name, *sigs))
            views.append({})
    if misses:
        from backend.machine_store import MachineStore, machine_view

        store = MachineStore(dirs)
        for index, name, spec_sig, record_sig in misses:
            both = {flag: machine_view(store.load(name, supervised=flag))
                    for flag in (True, False)}
            views[index] = both[supervised]
            if NAME_PATTERN.fullmatch(name):
                fresh[name] = {"sigs": [spec_sig, record_sig],
                               "supervised": both[True], "unsupervised": both[False]}
    if misses or len(fresh) != len(entries):
        _write(dirs, cache_path, fresh)
    return views


def _write(dirs: StateDir, cache_path: str, entries: dict[str, Any]) -> None:
    from pathlib import Path

    from backend.atomic_write import atomic_write_bytes
    from backend.errors import StorageError

    with contextlib.suppress(StorageError, OSError):
        atomic_write_bytes(Path(cache_path),
                           orjson.dumps({"version": CACHE_VERSION, "entries": entries}))
