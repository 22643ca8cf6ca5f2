from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from pathlib import Path

import pytest

from backend.errors import IllegalTransitionError, MachineExistsError
from backend.state.disk_reconcile import LogStep, RecordFix, plan_reconciliation
from backend.state.engine import Engine
from backend.state.event_log import EventLog, read_log
from backend.state.events import new_instance_event
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.machine_store import LoadedMachine, MachineStore
from backend.state.projection import Projection
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import open_state_dir
from tests.conftest import spec


def verbs(home: Path, name: str | None = None) -> list[str]:
    events = read_log(open_state_dir(home).event_log).events
    return [e.type.rsplit(".", 1)[1] for e in events if name is None or e.subject == name]


async def test_create_emits_events_and_writes_record(engine: Engine, home: Path) -> None:
    machine = await engine.create_machine(spec("web"))
    assert machine.state is InstanceState.STOPPED
    assert machine.record is not None and machine.record.persisted is PersistedState.CREATED
    assert verbs(home) == ["creating", "created"]
    with pytest.raises(MachineExistsError):
        await engine.create_machine(spec("web"))


async def test_transitions_update_record_and_subscribers(engine: Engine) -> None:
    sub = engine.subscribe()
    await engine.create_machine(spec("vm"))
    await engine.transition("vm", Verb.BOOTING, message="starting",
                            update=lambda r: setattr(r, "pid", 4242))
    await engine.transition("vm", Verb.READY, message="ssh answered")
    record = engine.store.load_record("vm")
    assert record.state is InstanceState.READY
    assert record.persisted is PersistedState.RUNNING and record.pid == 4242
    assert record.ever_started and record.started_at is not None
    seen = []
    while (item := sub.get_nowait()) is not None:
        seen.append(item.type.rsplit(".", 1)[1])  # type: ignore[union-attr]
    assert seen == ["creating", "created", "booting", "ready"]


async def test_illegal_transition_writes_nothing(engine: Engine, home: Path) -> None:
    await engine.create_machine(spec("vm"))
    log_before = open_state_dir(home).event_log.read_bytes()
    record_before = engine.store.load_record("vm")
    with pytest.raises(IllegalTransitionError, match="'stopped'"):
        await engine.transition("vm", Verb.READY)
    assert open_state_dir(home).event_log.read_bytes() == log_before
    assert engine.store.load_record("vm") == record_before


async def test_replay_rebuilds_live_state(home: Path) -> None:
    engine = await Engine.open(home)
    for name in ("a", "b", "c"):
        await engine.create_machine(spec(name))
    await engine.transition("a", Verb.BOOTING)
    await engine.transition("a", Verb.READY)
    await engine.transition("b", Verb.BOOTING)
    await engine.transition("b", Verb.FAILED, reason="kernel panic")
    await engine.delete_machine("c")
    live = engine.projection.snapshot()
    await engine.close()
    again = await Engine.open(home)
    try:
        assert again.projection.snapshot() == live
        assert again.machine("b").reason == "kernel panic"
    finally:
        await again.close()


async def test_log_ahead_of_record_is_repaired(home: Path) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    await engine.close()
    # simulate a crash right after the log append, before state.json was written
    dirs = open_state_dir(home)
    log = EventLog.open(dirs.event_log)
    log.append(new_instance_event("vm", Verb.BOOTING, from_state=InstanceState.STOPPED))
    assert MachineStore(dirs).load_record("vm").state is InstanceState.STOPPED
    engine = await Engine.open(home)
    try:
        record = engine.store.load_record("vm")
        assert record.state is InstanceState.BOOTING
        assert record.persisted is PersistedState.RUNNING
    finally:
        await engine.close()


async def test_disk_changes_behind_the_logs_back(home: Path) -> None:
    engine = await Engine.open(home)
    for name in ("keep", "gone", "bad"):
        await engine.create_machine(spec(name))
    await engine.close()
    dirs = open_state_dir(home)
    # a machine copied in by hand, one removed by hand, one made invalid
    MachineStore(dirs).create(spec("copied"))
    shutil.rmtree(dirs.machine_dir("gone"))
    bad = dirs.spec_path("bad")
    bad.write_bytes(b"\0\0\0\0")
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()

    engine = await Engine.open(home)
    try:
        states = {n: engine.projection.state_of(n) for n in ("keep", "gone", "bad", "copied")}
        assert states == {"keep": InstanceState.STOPPED, "gone": None,
                          "bad": InstanceState.BROKEN, "copied": InstanceState.STOPPED}
        assert "NUL" in (engine.machine("bad").reason or "")
        assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest
        assert verbs(home, "gone")[-1] == "deleted"
        assert verbs(home, "bad")[-1] == "broken"
    finally:
        await engine.close()
    # fixing the file by hand repairs the machine at the next start
    bad.write_text('name = "bad"\n')
    engine = await Engine.open(home)
    try:
        assert engine.projection.state_of("bad") is InstanceState.STOPPED
        assert verbs(home, "bad")[-1] == "repaired"
    finally:
        await engine.close()


async def test_startup_removes_leftover_temp_files(home: Path) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    await engine.close()
    stray = open_state_dir(home).machine_dir("vm") / ".boxui-tmp-machine.toml.dead"
    stray.write_text("half")
    engine = await Engine.open(home)
    await engine.close()
    assert not stray.exists()


async def test_torn_log_tail_is_reported_at_startup(home: Path) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    await engine.close()
    log_path = open_state_dir(home).event_log
    with open(log_path, "ab") as fh:
        fh.write(b'{"crc32":"1234abcd","event":{"id":')
    engine = await Engine.open(home)
    try:
        assert any("damaged tail" in note for note in engine.startup_notes)
        assert engine.projection.state_of("vm") is InstanceState.STOPPED
    finally:
        await engine.close()


async def test_machine_left_creating_by_a_crash_is_finished(home: Path) -> None:
    engine = await Engine.open(home)
    await asyncio.to_thread(engine.store.create, spec("vm"))
    await engine.transition("vm", Verb.CREATING)  # boxui dies before `created`
    await engine.close()
    engine = await Engine.open(home)
    try:
        assert engine.projection.state_of("vm") is InstanceState.STOPPED
        assert verbs(home, "vm") == ["creating", "created"]
    finally:
        await engine.close()


async def test_delete_cut_short_by_a_crash_is_finished_at_startup(home: Path) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    trash = await asyncio.to_thread(engine.store.move_to_trash, "vm")  # then boxui dies
    await engine.close()
    engine = await Engine.open(home)
    try:
        assert engine.projection.state_of("vm") is None and not trash.exists()
        events = [e for e in read_log(engine.dirs.event_log).events if e.subject == "vm"]
        assert events[-1].data["message"] == "deletion finished at startup"
    finally:
        await engine.close()


@pytest.mark.parametrize("delay_ms", range(0, 40, 2))
async def test_cancelled_steps_leave_log_and_projection_agreeing(home: Path,
                                                                 delay_ms: int) -> None:
    """A caller cancelled mid-step (a supervisor shutting down) must not leave an event
    in the log that the projection never applied, nor a directory the log deleted."""
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))

    async def churn() -> None:
        await engine.delete_machine("vm")
        await engine.create_machine(spec("vm"))
        await engine.delete_machine("vm")

    task = asyncio.create_task(churn())
    await asyncio.sleep(delay_ms / 1000)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    live = engine.projection.state_of("vm")
    on_disk = engine.store.exists("vm")
    await engine.close()
    assert on_disk == (live is not None)
    engine = await Engine.open(home)
    try:
        assert engine.projection.state_of("vm") == live
        assert [e for e in read_log(engine.dirs.event_log).events
                if e.data.get("message") == "found on disk; registered"] == []
    finally:
        await engine.close()


def _projection(histories: dict[str, list[Verb]]) -> Projection:
    projection = Projection()
    for name, history in histories.items():
        for verb in history:
            projection.apply(new_instance_event(name, verb,
                                                from_state=projection.state_of(name)))
    return projection


def test_reconciliation_is_decided_from_what_it_is_given() -> None:
    """Every case of disk against log, planned without a state dir or an engine."""
    c, made, up = Verb.CREATING, Verb.CREATED, [Verb.BOOTING, Verb.READY]
    projection = _projection({
        "behind": [c, made, *up], "half": [c], "fixed": [c, made, Verb.BROKEN],
        "vanished": [c, made, *up], "trashed": [c, made], "spoilt": [c, made],
    })
    stopped = InstanceState.STOPPED
    on_disk = [
        LoadedMachine(name="behind", record=RuntimeRecord(state=stopped), state=stopped),
        LoadedMachine(name="half", state=stopped),
        LoadedMachine(name="fixed", state=stopped),
        LoadedMachine(name="spoilt", state=InstanceState.BROKEN, reason="bad toml"),
        LoadedMachine(name="copied", state=InstanceState.BROKEN, reason="bad toml"),
        LoadedMachine(name="Bad Name", state=InstanceState.BROKEN, reason="invalid name"),
    ]
    plan = plan_reconciliation(on_disk, projection, deleting={"trashed"})
    assert plan.notes == ["ignoring 'Bad Name': invalid name"]
    assert plan.actions == [
        RecordFix("behind", InstanceState.READY),
        LogStep("half", Verb.CREATED, "creation finished at startup"),
        LogStep("fixed", Verb.REPAIRED, "machine files are valid again"),
        LogStep("spoilt", Verb.BROKEN, "machine files are invalid", reason="bad toml"),
        LogStep("copied", Verb.CREATED, "found on disk"),
        LogStep("copied", Verb.BROKEN, "machine files are invalid", reason="bad toml"),
        LogStep("trashed", Verb.DELETED, "deletion finished at startup"),
        LogStep("vanished", Verb.CRASHED, "machine directory vanished",
                reason="machine directory removed outside boxui"),
        LogStep("vanished", Verb.DELETED, "machine directory removed outside boxui"),
    ]
    assert plan_reconciliation([], Projection()).actions == []


def test_record_fix_sets_state_and_what_survives_a_restart() -> None:
    record = RuntimeRecord(state=InstanceState.STOPPED, ever_started=True)
    RecordFix("vm", InstanceState.READY)(record)
    assert record.state is InstanceState.READY
    assert record.persisted is PersistedState.RUNNING
