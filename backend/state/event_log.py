"""The append-only event log: one JSON line per event, each guarded by a CRC32.

Line format: `{"crc32":"<8 hex>","event":<event json>}\n`; the CRC covers exactly the bytes
of `<event json>`, so a flipped bit anywhere in an event is caught without guessing at
JSON canonicalisation.

A crash (or power loss) can leave the last record torn or zero-filled. Opening the log for
writing truncates such a tail, after keeping a `.broken` copy of the damaged file, and
appending resumes. A bad record in the middle is different: something later was written
after it, so it is reported and skipped on replay, but never silently dropped from disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from backend.errors import EventLogError, StorageError
from backend.state.atomic_write import fsync_dir, fsync_file
from backend.state.events import CloudEvent

_PREFIX = b'{"crc32":"'
_MIDDLE = b'","event":'
_HEADER_LEN = len(_PREFIX) + 8 + len(_MIDDLE)


def encode_record(event: CloudEvent) -> bytes:
    body = json.dumps(event.to_json_dict(), separators=(",", ":"), ensure_ascii=False)
    raw = body.encode("utf-8")
    crc = f"{zlib.crc32(raw):08x}".encode()
    return _PREFIX + crc + _MIDDLE + raw + b"}\n"


def decode_record(line: bytes) -> CloudEvent:
    """Decode one line (without its newline); raises ValueError saying what is wrong."""
    if not line.startswith(_PREFIX) or line[len(_PREFIX) + 8 :].find(_MIDDLE) != 0:
        raise ValueError("not a boxui event record")
    if not line.endswith(b"}"):
        raise ValueError("record is truncated")
    crc_text = line[len(_PREFIX) : len(_PREFIX) + 8]
    body = line[_HEADER_LEN:-1]
    try:
        expected = int(crc_text, 16)
    except ValueError:
        raise ValueError("record has a malformed checksum") from None
    if zlib.crc32(body) != expected:
        raise ValueError("CRC mismatch")
    try:
        return CloudEvent.model_validate(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise ValueError(f"record is not a valid event ({type(exc).__name__})") from None


@dataclass(frozen=True)
class BadRecord:
    line: int
    offset: int
    reason: str


@dataclass
class LogScan:
    """What a read of the log found. `good_end` is the byte offset just past the last
    valid record: everything after it is a damaged tail."""

    events: list[CloudEvent] = field(default_factory=list)
    bad_records: list[BadRecord] = field(default_factory=list)
    good_end: int = 0
    size: int = 0

    @property
    def damaged_tail_bytes(self) -> int:
        return self.size - self.good_end

    @property
    def mid_log_errors(self) -> list[BadRecord]:
        return [b for b in self.bad_records if b.offset < self.good_end]


@dataclass
class LogReport:
    """What opening the log repaired or found, for the user and the tests."""

    path: Path
    events: int
    truncated_bytes: int = 0
    broken_copy: Path | None = None
    mid_log_errors: list[BadRecord] = field(default_factory=list)

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.truncated_bytes:
            out.append(
                f"{self.path}: removed a damaged tail of {self.truncated_bytes} bytes "
                f"(copy kept at {self.broken_copy})"
            )
        for bad in self.mid_log_errors:
            out.append(f"{self.path}:{bad.line}: skipped a bad record: {bad.reason}")
        return out


def scan(data: bytes) -> LogScan:
    result = LogScan(size=len(data))
    offset = 0
    line_no = 0
    while offset < len(data):
        line_no += 1
        newline = data.find(b"\n", offset)
        end = len(data) if newline == -1 else newline
        line = data[offset:end]
        try:
            if newline == -1:
                raise ValueError("record is torn (no newline)")
            result.events.append(decode_record(line))
            result.good_end = end + 1
        except ValueError as exc:
            reason = "zero-filled record" if line and not line.strip(b"\0") else str(exc)
            result.bad_records.append(BadRecord(line_no, offset, reason))
        offset = end + 1
    return result


def read_log(path: Path) -> LogScan:
    """Read without repairing: safe for read-only commands while a supervisor writes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return LogScan()
    except OSError as exc:
        raise EventLogError(f"cannot read event log {path}: {exc.strerror}") from exc
    result = scan(data)
    # a tail without a newline may be a record being written right now: not an error here
    result.bad_records = [b for b in result.bad_records if b.offset < result.good_end]
    return result


class EventLog:
    """The writer's handle. Only the process holding the supervisor lock opens one."""

    def __init__(self, path: Path, report: LogReport, events: list[CloudEvent]) -> None:
        self.path = path
        self.report = report
        self._initial = events
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> EventLog:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise EventLogError(f"cannot read event log {path}: {exc.strerror}") from exc
        result = scan(data)
        report = LogReport(path=path, events=len(result.events),
                           mid_log_errors=result.mid_log_errors)
        if result.damaged_tail_bytes:
            report.broken_copy = _keep_broken_copy(path)
            report.truncated_bytes = result.damaged_tail_bytes
            with open(path, "r+b") as fh:
                fh.truncate(result.good_end)
                fh.flush()
                os.fsync(fh.fileno())
        return cls(path, report, result.events)

    def initial_events(self) -> list[CloudEvent]:
        """The events found at open, for the first replay; later reads use `read_log`."""
        events, self._initial = self._initial, []
        return events

    def append(self, event: CloudEvent, *, durable: bool = True) -> None:
        """Append durably (`durable=False`: written, not synced; the next durable append
        syncs it too). On failure (e.g. disk full) nothing partial stays in the log."""
        record = encode_record(event)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(record)
                    while view:
                        view = view[os.write(fd, view):]
                    if durable:
                        os.fsync(fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise StorageError(
                        f"could not append to event log {self.path}: "
                        f"{exc.strerror or exc}; the log is unchanged"
                    ) from exc
            finally:
                os.close(fd)


def iter_new_records(path: Path, offset: int) -> tuple[list[CloudEvent], int]:
    """Complete records appended after `offset`, and the offset to continue from."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n")
    if end == -1:
        return [], offset
    events: list[CloudEvent] = []
    for line in data[:end].split(b"\n"):
        with contextlib.suppress(ValueError):
            events.append(decode_record(line))
    return events, offset + end + 1


def _keep_broken_copy(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    copy = path.with_name(f"{path.name}.{stamp}.broken")
    tmp = copy.with_name(copy.name + ".tmp")
    shutil.copyfile(path, tmp)
    fsync_file(tmp)
    os.replace(tmp, copy)
    fsync_dir(path.parent)
    return copy


def iter_events(path: Path) -> Iterator[CloudEvent]:
    yield from read_log(path).events
