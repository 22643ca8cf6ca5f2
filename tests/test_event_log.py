from __future__ import annotations

import errno
import json
import os
import zlib
from pathlib import Path

import pytest
from cloudevents.core.formats.json import JSONFormat

from backend.errors import StorageError
from backend.state.event_log import EventLog, read_log
from backend.state.events import new_instance_event
from backend.state.lifecycle import InstanceState, Verb


def write_events(path: Path, n: int) -> list[str]:
    log = EventLog.open(path)
    ids = []
    for i in range(n):
        event = new_instance_event(f"m{i}", Verb.CREATING, from_state=None, message=f"e{i}")
        log.append(event)
        ids.append(event.id)
    return ids


def test_lines_are_json_with_crc_and_valid_cloudevents(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    ids = write_events(path, 3)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    fmt = JSONFormat()
    for line, event_id in zip(lines, ids, strict=True):
        record = json.loads(line)
        body = json.dumps(record["event"], separators=(",", ":"), ensure_ascii=False)
        assert int(record["crc32"], 16) == zlib.crc32(body.encode())
        parsed = fmt.read(None, body)
        assert parsed.get_specversion() == "1.0"
        assert parsed.get_id() == event_id
        assert parsed.get_type() == "dev.boxui.instance.v1.creating"
        assert parsed.get_subject() is not None
        assert parsed.get_source() == "/boxui/supervisor"
        assert parsed.get_time() is not None


def test_torn_tail_is_truncated_with_broken_copy(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    ids = write_events(path, 4)
    data = path.read_bytes()
    torn = data[: len(data) - 17]
    path.write_bytes(torn)
    log = EventLog.open(path)
    assert log.report.truncated_bytes > 0
    assert log.report.broken_copy is not None
    assert log.report.broken_copy.name.endswith(".broken")
    assert log.report.broken_copy.read_bytes() == torn
    assert [e.id for e in log.initial_events()] == ids[:3]
    log.append(new_instance_event("z", Verb.CREATING, from_state=None))
    scan = read_log(path)
    assert [e.id for e in scan.events][:3] == ids[:3] and len(scan.events) == 4
    assert scan.bad_records == []


def test_zeroed_tail_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    ids = write_events(path, 2)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)
    log = EventLog.open(path)
    assert log.report.truncated_bytes == 4096
    assert [e.id for e in log.initial_events()] == ids
    assert path.read_bytes().endswith(b"}\n")


def test_zeroed_record_inside_tail_region(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    ids = write_events(path, 3)
    data = bytearray(path.read_bytes())
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    data[last_start:] = b"\0" * (len(data) - last_start)
    path.write_bytes(bytes(data))
    log = EventLog.open(path)
    assert [e.id for e in log.initial_events()] == ids[:2]
    assert log.report.truncated_bytes > 0


def test_mid_log_crc_error_is_reported_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    ids = write_events(path, 5)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"e1"', b'"eX"')
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    log = EventLog.open(path)
    assert path.read_bytes() == damaged, "a mid-log record must not be removed"
    assert log.report.truncated_bytes == 0
    [bad] = log.report.mid_log_errors
    assert bad.line == 2 and "CRC mismatch" in bad.reason
    assert any("log.jsonl:2" in line for line in log.report.lines())
    assert [e.id for e in log.initial_events()] == ids[:1] + ids[2:]


def test_append_failure_leaves_log_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.jsonl"
    write_events(path, 2)
    before = path.read_bytes()
    log = EventLog.open(path)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:20])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    event = new_instance_event("x", Verb.CREATING, from_state=None)
    with pytest.raises(StorageError, match="No space left on device; the log is unchanged"):
        log.append(event)
    monkeypatch.undo()
    assert path.read_bytes() == before
    log.append(event)
    assert len(read_log(path).events) == 3


def test_read_only_scan_ignores_a_record_being_written(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_events(path, 2)
    with open(path, "ab") as fh:
        fh.write(b'{"crc32":"0000')
    scan = read_log(path)
    assert len(scan.events) == 2 and scan.bad_records == []


def test_event_data_carries_from_and_to() -> None:
    event = new_instance_event("vm", Verb.READY, from_state=InstanceState.BOOTING,
                               message="ssh answered")
    assert event.data["from"] == "booting" and event.data["to"] == "ready"
    assert event.type == "dev.boxui.instance.v1.ready"
