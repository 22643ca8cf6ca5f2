"""A cache that lets `boxui ls` answer for 1,000 machines without re-validating each one.

Importing pydantic alone costs more than half of `ls`'s time budget, so a listing whose
files have not changed is served from a cache of already-validated views. An entry is
used only when both files' stat signatures (inode, size, mtime, ctime) still match; an
atomic rewrite changes the inode and a hand edit changes the mtime, so a stale view is
never shown. Anything else goes through the full pydantic load and refreshes the entry.

The supervisor changes one machine at a time (every exec marks it busy, then ready), so
it does not rewrite the whole cache for that: it appends the machine's new entry to a
journal beside it, one line in one `write` on an O_APPEND descriptor, so a reader sees
the line whole or not at all (a torn last line is skipped). Readers apply the journal
over the cache, later lines winning. Once the journal has grown to a quarter of the
cache (so a listing never reads much more than the cache itself), it is folded in: the
cache is rewritten with every entry and the journal emptied. A line lost in a race with that
(appended just before the journal is emptied) leaves an older entry, whose signatures no
longer match: that machine is validated afresh, so a race costs time, never truth.

Two processes write here (the daemon journals and folds; a CLI `ls` that missed
rewrites the cache): the cache is replaced by rename only (a temp of each writer's own),
so a reader sees one whole cache or another; a journal line lost to the other's fold
leaves an entry whose signatures no longer match, so nothing stays stale. In one process,
`_mirror_lock` serialises everything that touches the mirror (refresh, and every cache
write); reads of the files need no lock.

The cache is derived data: losing it, or failing to write it, only costs time. This
module therefore imports nothing heavy; the full load (pydantic) is imported on a miss.
"""

from __future__ import annotations

import contextlib
import os
import threading
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
JOURNAL_NAME = ".ls-cache.journal"
#: the journal is folded into the cache once it holds this much, or a quarter of the cache
JOURNAL_MIN_LIMIT = 64 * 1024
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
    """The cache's entries with the journal's applied over them."""
    try:
        with open(cache_path, "rb") as fh:
            cache = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
        cache = None
    found = cache.get("entries") if isinstance(cache, dict) and \
        cache.get("version") == CACHE_VERSION else None
    entries: dict[str, Any] = found if isinstance(found, dict) else {}
    _apply_journal(entries, _journal_path(cache_path))
    return entries


def _journal_path(cache_path: str) -> str:
    return os.path.join(os.path.dirname(cache_path), JOURNAL_NAME)


def _apply_journal(entries: dict[str, Any], journal_path: str) -> None:
    try:
        with open(journal_path, "rb") as fh:
            lines = fh.read().split(b"\n")[:-1]  # the part after the last newline is torn
    except OSError:
        return
    for line in lines:
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(item, dict) or item.get("version") != CACHE_VERSION:
            continue
        name, entry = item.get("name"), item.get("entry")
        if isinstance(name, str) and isinstance(entry, dict):
            entries[name] = entry
        elif isinstance(name, str):
            entries.pop(name, None)  # the machine is gone


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
    """Re-validate `names` and journal their views, so the next `ls` stays on the fast
    path without the whole cache being rewritten.

    The supervisor calls this after it writes a machine's files. An entry is stored only
    if the files did not change while they were being read; otherwise (and for a machine
    deleted) the journal says the machine has no entry, and `ls` validates it itself.
    """
    cache_path = os.path.join(dirs.machines, CACHE_NAME)
    lines: list[bytes] = []
    fresh: dict[str, Any] = {}
    for name in names:
        entry = fresh[name] = _fresh_entry(dirs, name)
        lines.append(orjson.dumps({"version": CACHE_VERSION, "name": name, "entry": entry})
                     + b"\n")
    data = b"".join(lines)
    with _mirror_lock:  # transitions refresh from several worker threads at once
        size = _append(_journal_path(cache_path), data)
        _mirror_appended(cache_path, fresh, size, len(data))
        if size is not None and size > max(JOURNAL_MIN_LIMIT, _size(cache_path) // 4):
            _write(dirs, cache_path, _entries_to_fold(cache_path, size))


#: the cache and journal as this process last left them: (the cache file's signature,
#: the journal's size, the entries). The supervisor folds the journal every few hundred
#: marks (two per exec); parsing the whole cache again for that took tens of ms holding
#: the GIL with 1,000 machines, stalling every command in flight. Used only while both
#: files are exactly as written here (an `ls` that rewrote the cache changes them).
_mirror: tuple[Signature, int, dict[str, Any]] | None = None
_mirror_lock = threading.RLock()


def _mirror_appended(cache_path: str, fresh: dict[str, Any], size: int | None,
                     written: int) -> None:
    global _mirror
    if _mirror is None or size is None or _mirror[1] != size - written or \
            _mirror[0] != _signature(cache_path):
        _mirror = None
        return
    entries = _mirror[2]
    for name, entry in fresh.items():
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry
    _mirror = (_mirror[0], size, entries)


def _entries_to_fold(cache_path: str, journal_size: int) -> dict[str, Any]:
    if _mirror is not None and _mirror[1] == journal_size and \
            _mirror[0] == _signature(cache_path):
        return dict(_mirror[2])
    return _read_entries(cache_path)


def _fresh_entry(dirs: StateDir, name: str) -> dict[str, Any] | None:
    before = _sigs(dirs, name)
    if before == [None, None]:
        return None  # deleted
    try:
        views = _validated_views(dirs, name)
    except BoxuiError:
        return None
    if _sigs(dirs, name) != before:
        return None  # changed while read: `ls` validates it
    return {"sigs": before, "supervised": views[True], "unsupervised": views[False]}


def _append(journal_path: str, data: bytes) -> int | None:
    """Append `data` in one write (whole for readers); the journal's size after it, or
    None when it could not be written (only time is lost)."""
    try:
        fd = os.open(journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
    except OSError:
        return None
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":
            data = b"\n" + data  # after a torn line: ours must not be glued to it
        os.write(fd, data)
        return os.fstat(fd).st_size
    except OSError:
        return None
    finally:
        os.close(fd)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


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
    with _mirror_lock:
        _write_locked(dirs, cache_path, entries)


def _write_locked(dirs: StateDir, cache_path: str, entries: dict[str, Any]) -> None:
    """Replace the cache with `entries` (which include the journal's) and empty the
    journal; a machine's entry is kept only while its directory exists."""
    # not durable: the supervisor refreshes this after every event, and two fsyncs each
    # time were most of the cost of re-adopting machines at start-up; a power cut can
    # only leave an old or unreadable cache, which is stat-checked or ignored
    global _mirror
    live = set(_names(dirs))
    kept = {name: entry for name, entry in entries.items() if name in live}
    _mirror = None
    with contextlib.suppress(StorageError, OSError):
        atomic_write_bytes(Path(cache_path),
                           orjson.dumps({"version": CACHE_VERSION, "entries": kept}),
                           durable=False)
        # emptied only once the cache holds its entries; one appended meanwhile is lost,
        # which only costs its machine a validation
        os.truncate(_journal_path(cache_path), 0)
        _mirror = (_signature(cache_path), 0, kept)
