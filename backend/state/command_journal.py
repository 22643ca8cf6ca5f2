"""The command registry on disk: `commands/<machine>.jsonl`, one journal per machine.

Each step of a command appends the whole record as one line,
`{"crc32":"<8 hex>","command":<record json>}\n`, in a single `write` on an `O_APPEND`
file: a supervisor killed at any point leaves every earlier line whole, and at worst a
torn last line, which the CRC rejects. The newest line of an id is its record (each line
carries `revision`, so the order of lines never decides). A journal grows by a few lines
per command; once its lines outnumber its records by a margin it is compacted: the
records the retention setting keeps are written to a new file that replaces the old one
atomically (`atomic_write`), so a crash mid-compaction leaves the old journal or the new.

Journals live outside `machines/` so a command's record outlives its machine (a `boxui
run` cell deletes its machine when done); a deleted machine's journal goes once
retention has aged out its last record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tomllib
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from backend.errors import BoxuiError, StorageError
from backend.state.atomic_write import atomic_write_bytes
from backend.state.command_record import CommandRecord
from backend.state.events import now_utc

_PREFIX = b'{"crc32":"'
_MIDDLE = b'","command":'
_SUFFIX = ".jsonl"
#: a journal is compacted when it has this many lines more than twice its records
_SLACK = 64


@dataclass(frozen=True)
class Retention:
    """How many finished commands each machine's journal keeps, and for how long;
    commands not finished are always kept. None: no limit of that kind."""

    keep: int | None = 1000
    max_age: timedelta | None = timedelta(days=30)

    def kept(self, records: list[CommandRecord], now: datetime) -> list[CommandRecord]:
        """`records` (oldest first) less those retention drops, order kept."""
        finished = [r for r in records if r.finished]
        dropped: set[str] = set()
        if self.max_age is not None:
            cutoff = now - self.max_age
            dropped |= {r.id for r in finished if (r.completed_at or r.created_at) < cutoff}
        if self.keep is not None and len(finished) > self.keep:
            dropped |= {r.id for r in finished[:len(finished) - self.keep]}
        return [r for r in records if r.id not in dropped]


#: the daemon's settings file in the state dir; `[commands]` holds the retention
CONFIG_NAME = "daemon.toml"


def load_retention(root: Path) -> Retention:
    """`[commands]` of `daemon.toml` under the state dir: `keep` (finished commands per
    machine) and `keep_days`; 0 means no limit of that kind. No file: the defaults."""
    path = root / CONFIG_NAME
    try:
        with path.open("rb") as file:
            section = tomllib.load(file).get("commands", {})
    except FileNotFoundError:
        return Retention()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BoxuiError(f"{path}: {exc}") from None
    unknown = set(section) - {"keep", "keep_days"} if isinstance(section, dict) else {"?"}
    if unknown:
        raise BoxuiError(f"{path}: [commands] has unknown keys: {', '.join(sorted(unknown))}")
    keep, days = section.get("keep", 1000), section.get("keep_days", 30)
    for key, value in (("keep", keep), ("keep_days", days)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise BoxuiError(f"{path}: [commands] {key} must be a number >= 0")
    return Retention(keep=int(keep) or None,
                     max_age=timedelta(days=days) if days else None)


def encode_line(record: CommandRecord, revision: int) -> bytes:
    data = record.model_dump(mode="json")
    data["revision"] = revision
    if record.stdin_b64 is not None and not record.finished:
        data["stdin_b64"] = record.stdin_b64  # only while it may be dispatched again
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _PREFIX + f"{zlib.crc32(raw):08x}".encode() + _MIDDLE + raw + b"}\n"


def decode_line(line: bytes) -> tuple[CommandRecord, int]:
    """One line (without its newline) as (record, revision); ValueError says what is wrong."""
    head = len(_PREFIX) + 8
    if not line.startswith(_PREFIX) or line[head:head + len(_MIDDLE)] != _MIDDLE \
            or not line.endswith(b"}"):
        raise ValueError("not a whole command record")
    body = line[head + len(_MIDDLE):-1]
    try:
        crc = int(line[len(_PREFIX):head], 16)
    except ValueError:
        raise ValueError("malformed checksum") from None
    if zlib.crc32(body) != crc:
        raise ValueError("CRC mismatch")
    try:
        data = json.loads(body)
        revision = int(data.pop("revision"))
        return CommandRecord.model_validate(data), revision
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ValueError(f"not a valid command record ({type(exc).__name__})") from None


@dataclass
class _Journal:
    lines: int = 0


class CommandJournal:
    """The journals of one state dir. Not thread-safe: its owner (the registry) calls it
    from one event loop, so lines of one record are appended in order."""

    def __init__(self, directory: Path, retention: Retention | None = None, *,
                 sync: bool = True) -> None:
        self.directory = directory
        self.retention = retention or Retention()
        self.sync = sync
        self.notes: list[str] = []  # what loading found damaged, for the log
        self._journals: dict[str, _Journal] = {}
        self._revisions: dict[str, int] = {}

    def path(self, machine: str) -> Path:
        return self.directory / f"{machine}{_SUFFIX}"

    def load(self, *, compact: bool = True) -> list[CommandRecord]:
        """Every kept record, each machine's oldest first; compacts what needs it, unless
        `compact` is off (a reader that does not hold the state dir's lock writes nothing)."""
        if not self.directory.is_dir():
            return []
        loaded: list[CommandRecord] = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            machine = path.name.removesuffix(_SUFFIX)
            records, lines, damaged = self._read(path)
            self._journals[machine] = _Journal(lines)
            if not compact:
                loaded.extend(records)
                continue
            if damaged:
                self._keep_broken_copy(path)
            if damaged or lines > 2 * len(records) + _SLACK or \
                    self.retention.kept(records, now_utc()) != records:
                records = self.compact(machine, records)
            loaded.extend(records)
        return loaded

    def _read(self, path: Path) -> tuple[list[CommandRecord], int, bool]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        latest: dict[str, tuple[CommandRecord, int]] = {}
        damaged = False
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                record, revision = decode_line(line)
            except ValueError as exc:
                damaged = True
                self.notes.append(f"{path}:{number}: skipped a bad command record: {exc}")
                continue
            seen = latest.get(record.id)
            if seen is None or revision > seen[1]:
                latest[record.id] = (record, revision)
        for record_id, (_record, revision) in latest.items():
            self._revisions[record_id] = revision
        ordered = sorted(latest.values(), key=lambda pair: pair[0].created_at)
        return [record for record, _rev in ordered], sum(1 for x in lines if x), damaged

    def _keep_broken_copy(self, path: Path) -> None:
        stamp = now_utc().strftime("%Y%m%dT%H%M%S")
        with contextlib.suppress(OSError):
            shutil.copy2(path, path.with_name(f"{path.name}.{stamp}.broken"))

    def append(self, record: CommandRecord) -> None:
        """Add `record`'s newest version in one write. Written is enough to outlive this
        process (the kernel has it); `flush` puts it on disk, which only a crash of the
        whole host needs."""
        revision = self._revisions.get(record.id, 0) + 1
        line = encode_line(record, revision)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(self.path(record.machine),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                written = os.write(fd, line)
                if written != len(line):  # a full disk: the torn line fails its CRC
                    raise OSError(28, "short write (disk full?)")
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot record command {record.id}: "
                               f"{exc.strerror or exc}") from exc
        self._revisions[record.id] = revision
        self._journals.setdefault(record.machine, _Journal()).lines += 1

    def flush(self, machine: str) -> None:
        """Sync `machine`'s journal to disk (with the journal's `sync` on): blocking, so
        its caller runs it in a thread."""
        if not self.sync:
            return
        try:
            fd = os.open(self.path(machine), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot sync {self.path(machine)}: "
                               f"{exc.strerror or exc}") from exc

    def needs_compaction(self, machine: str, records: int) -> bool:
        journal = self._journals.get(machine)
        return journal is not None and journal.lines > 2 * records + _SLACK

    def compact(self, machine: str, records: list[CommandRecord]) -> list[CommandRecord]:
        """Replace `machine`'s journal with the records retention keeps (oldest first),
        atomically; returns them. An emptied journal is removed."""
        kept = self.retention.kept(records, now_utc())
        path = self.path(machine)
        if not kept:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._journals.pop(machine, None)
        else:
            data = b"".join(encode_line(r, self._revisions.get(r.id, 1)) for r in kept)
            atomic_write_bytes(path, data, 0o600)
            self._journals[machine] = _Journal(len(kept))
        kept_ids = {r.id for r in kept}
        for record in records:
            if record.id not in kept_ids:
                self._revisions.pop(record.id, None)
        return kept
