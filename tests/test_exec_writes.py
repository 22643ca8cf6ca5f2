"""What one exec writes: its busy and idle marks are logged and recorded (readers see
them) without the fsyncs every other step pays, and never rewrite the `ls` cache; the
command registry syncs one line per command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.state.engine import Engine
from backend.state.event_log import EventLog
from backend.state.events import CloudEvent
from backend.state.lifecycle import InstanceState, Verb
from backend.state.listing_cache import CACHE_NAME, JOURNAL_NAME, list_views
from backend.state.machine_store import MachineStore
from backend.supervision.machine_exec import ExecOutput, MachineExec
from tests.conftest import spec


async def _nothing(engine: Engine, name: str, port: int, argv: list[str],
                   stdin: bytes | None, timeout: float | None) -> ExecOutput:
    return ExecOutput(0, b"done", b"")


async def _ready_vm(engine: Engine) -> None:
    await engine.create_machine(spec("vm"))
    await engine.transition("vm", Verb.BOOTING)
    await engine.transition("vm", Verb.READY, update=lambda r: setattr(r, "ssh_port", 2222))


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    monkeypatch.setattr(os, "fdatasync", counting)
    return synced


async def test_an_exec_syncs_only_state_json_data(engine: Engine,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await _ready_vm(engine)
    synced = _count_fsyncs(monkeypatch)
    await engine.transition("vm", Verb.BUSY)
    await engine.transition("vm", Verb.IDLE)
    # state.json's data, once for each mark: no log fsync, no directory fsync
    assert len(synced) == 2
    synced.clear()
    await engine.transition("vm", Verb.STOPPING)  # any other step stays durable:
    assert len(synced) == 3  # the log, state.json, its directory
    synced.clear()
    # an exec through MachineExec pays exactly the two marks' syncs and the registry's
    # one: its dispatched line, on disk before the guest can run the command
    await engine.transition("vm", Verb.STOPPED)
    await engine.transition("vm", Verb.BOOTING)
    await engine.transition("vm", Verb.READY)
    synced.clear()
    machine_exec = MachineExec(engine, runner=_nothing)
    subscription = engine.subscribe(machine="vm")
    record, output = await machine_exec.run("vm", ["true"])
    assert output.stdout == b"done" and record.state == "succeeded"
    assert len(synced) == 3
    # marked busy while the command ran (even one this quick), and idle after it
    seen = []
    while (event := subscription.get_nowait()) is not None:
        seen.append(event)
    subscription.close()
    assert [e.type.rsplit(".", 1)[-1] for e in seen if isinstance(e, CloudEvent)] == [
        "busy", "idle"]
    assert engine.projection.state_of("vm") is InstanceState.READY


async def test_busy_and_idle_are_logged_and_recorded_all_the_same(home: Path) -> None:
    engine = await Engine.open(home)
    try:
        await _ready_vm(engine)
        list_views(engine.dirs, supervised=True)  # the cache, warm
        cache = engine.dirs.machines / CACHE_NAME
        before = cache.stat().st_ino if cache.exists() else None
        await engine.transition("vm", Verb.BUSY)
        assert MachineStore(engine.dirs).load("vm", supervised=True).state is \
            InstanceState.BUSY
        assert [v["state"] for v in list_views(engine.dirs, supervised=True)] == ["busy"]
        await engine.transition("vm", Verb.IDLE)
        assert (cache.stat().st_ino if cache.exists() else None) == before  # not rewritten
        assert (engine.dirs.machines / JOURNAL_NAME).stat().st_size > 0
    finally:
        await engine.close()
    # and the log has both steps, for the next supervisor's replay
    log = EventLog.open(engine.dirs.event_log)
    verbs = [e.type.rsplit(".", 1)[-1] for e in log.initial_events() if e.subject == "vm"]
    assert verbs[-2:] == ["busy", "idle"]
