"""Item 6: corrupt inputs give the documented outcome and never take the supervisor down
or hide other machines. A bad `machine.toml` or `state.json` makes that one machine
`broken` with a reason naming the file (which boxui never rewrites); a damaged log tail
is cut off with a `.broken` copy; a bad record mid-log is reported and skipped."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState, Verb
from backend.state.listing_cache import list_views
from backend.state.machine_spec import render_spec
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import StateDir, open_state_dir
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.faults.conftest import FaultRecorder
from tests.faults.support import events_of

Corruption = Callable[[bytes], bytes]

SPEC_DAMAGE: dict[str, tuple[Corruption, str]] = {
    "empty": (lambda b: b"", "name"),
    "nul-filled": (lambda b: b"\0" * len(b), "contains NUL bytes"),
    "truncated": (lambda b: b[: len(b) // 2].rstrip(b"\n") + b' = "', "invalid TOML"),
    "wrong-typed": (lambda b: b.replace(b"vcpus = 1", b'vcpus = "two"'), "vcpus"),
    "unknown-key": (lambda b: b + b'colour = "red"\n', "colour"),
}
RECORD_DAMAGE: dict[str, tuple[Corruption, str]] = {
    "empty": (lambda b: b"", "invalid JSON"),
    "nul-filled": (lambda b: b"\0" * len(b), "invalid JSON"),
    "truncated": (lambda b: b[: len(b) // 2], "invalid JSON"),
    "wrong-typed": (lambda b: b.replace(b'"restart_count": 0', b'"restart_count": "x"'),
                    "restart_count"),
    "unknown-key": (lambda b: b.replace(b"{", b'{"colour": "red",', 1), "colour"),
}


async def make(home: Path, *names: str) -> StateDir:
    engine = await Engine.open(home)
    try:
        for name in names:
            await engine.create_machine(spec(name))
    finally:
        await engine.close()
    return open_state_dir(home)


async def supervise_and_check_others(home: Path, broken: str | None) -> Engine:
    """A supervisor comes up; every other machine is listed and can start and stop."""
    engine = await Engine.open(home)
    driver = FakeDriver()
    try:
        sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=fixed_accel)
        async with sup.running(recover=recover_machines):
            names = {m.name for m in engine.machines()}
            assert names == set(engine.projection.names())
            for name in sorted(names - {broken}):
                await sup.start_machine(name)
                assert engine.projection.state_of(name) is InstanceState.READY
                await sup.stop_machine(name)
    finally:
        driver.kill_all()
        await engine.close()
    return engine


@pytest.mark.fault("6. corrupt machine.toml / state.json")
@pytest.mark.parametrize("kind", sorted(SPEC_DAMAGE))
@pytest.mark.parametrize("filename", ["machine.toml", "state.json"])
async def test_corrupt_machine_file(home: Path, kind: str, filename: str,
                                    fault: FaultRecorder) -> None:
    dirs = await make(home, "alpha", "bad", "zulu")
    path = dirs.machine_dir("bad") / filename
    damage, words = (SPEC_DAMAGE if filename == "machine.toml" else RECORD_DAMAGE)[kind]
    damaged = damage(path.read_bytes())
    assert damaged != path.read_bytes()
    path.write_bytes(damaged)

    engine = await supervise_and_check_others(home, broken="bad")
    machine = engine.machine("bad")
    assert machine.state is InstanceState.BROKEN
    assert machine.reason is not None and str(path) in machine.reason
    assert words in machine.reason, machine.reason
    assert "\n" not in machine.reason
    assert events_of(dirs, "bad")[-1][:1] == ("broken",)
    assert path.read_bytes() == damaged, "a broken machine's files are never rewritten"
    views = {v["name"]: v for v in list_views(dirs, supervised=False)}  # `boxui ls`
    assert views["bad"]["state"] == "broken" and set(views) == {"alpha", "bad", "zulu"}
    # fixed by hand: the next supervisor repairs it
    path.write_bytes(_valid(filename, dirs))
    engine = await supervise_and_check_others(home, broken=None)
    assert events_of(dirs, "bad")[-1][0] in ("repaired", "stopped")
    fault.cycle()


def _valid(filename: str, dirs: StateDir) -> bytes:
    if filename == "machine.toml":
        return render_spec(spec("bad")).encode()
    return RuntimeRecord(state=InstanceState.STOPPED).model_dump_json().encode()


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


LOG_DAMAGE: dict[str, Callable[[Path], None]] = {
    "zeroed tail": lambda p: _append(p, b"\0" * 4096),
    "torn tail": lambda p: _append(p, p.read_bytes().splitlines(keepends=True)[-1][:57]),
}


@pytest.mark.fault("6. damaged event log tail")
@pytest.mark.parametrize("kind", sorted(LOG_DAMAGE))
async def test_damaged_log_tail(home: Path, kind: str, fault: FaultRecorder) -> None:
    dirs = await make(home, "alpha", "beta")
    good = dirs.event_log.read_bytes()
    LOG_DAMAGE[kind](dirs.event_log)
    damaged = dirs.event_log.read_bytes()

    engine = await supervise_and_check_others(home, broken=None)
    assert len(engine.startup_notes) == 1
    note = engine.startup_notes[0]
    assert f"removed a damaged tail of {len(damaged) - len(good)} bytes" in note
    copies = list(dirs.events.glob("log.jsonl.*.broken"))
    assert len(copies) == 1 and copies[0].read_bytes() == damaged and str(copies[0]) in note
    scan = read_log(dirs.event_log)
    assert scan.bad_records == [] and dirs.event_log.read_bytes().startswith(good)
    fault.cycle()


@pytest.mark.fault("6. CRC error mid-log")
async def test_mid_log_crc_error(home: Path, fault: FaultRecorder) -> None:
    dirs = await make(home, "alpha", "beta")
    engine = await Engine.open(home)
    await engine.transition("beta", Verb.BOOTING)
    await engine.transition("beta", Verb.FAILED, reason="test")
    await engine.close()
    lines = dirs.event_log.read_bytes().splitlines(keepends=True)
    # flip one bit inside alpha's `created` record (line 2)
    assert b'"subject":"alpha"' in lines[1]
    at = lines[1].index(b"ready to start")
    lines[1] = lines[1][:at] + b"R" + lines[1][at + 1:]
    assert zlib.crc32(lines[1]) != 0
    dirs.event_log.write_bytes(b"".join(lines))
    damaged = dirs.event_log.read_bytes()

    engine = await supervise_and_check_others(home, broken=None)
    assert any("log.jsonl:2: skipped a bad record: CRC mismatch" in n
               for n in engine.startup_notes), engine.startup_notes
    assert dirs.event_log.read_bytes().startswith(damaged), "never dropped from disk"
    assert list(dirs.events.glob("*.broken")) == []
    assert {m.name for m in engine.machines()} == {"alpha", "beta"}
    fault.cycle()
