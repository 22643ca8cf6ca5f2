"""`autostart = true`: which machines a starting daemon starts, in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState, Verb
from backend.supervision.autostart import (
    AUTOSTART_FAILED_TYPE,
    AUTOSTART_TYPE,
    autostart_machines,
)
from backend.supervision.crash_recovery import GONE, recover_machines
from backend.supervision.supervisor import Supervisor
from tests.api_helpers import Api
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel

S = InstanceState


def supervisor(engine: Engine, driver: FakeDriver) -> Supervisor:
    return Supervisor(engine, driver, FakeBootFiles(), accel_for=fixed_accel)


async def wait_state(engine: Engine, name: str, state: InstanceState,
                     timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while engine.projection.state_of(name) is not state:
            await asyncio.sleep(0.02)


def autostart_events(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for event in read_log(engine.dirs.event_log).events:
        if event.type in (AUTOSTART_TYPE, AUTOSTART_FAILED_TYPE) and event.subject:
            found.setdefault(event.subject, []).append((event.type, event.message))
    return found


@pytest.fixture
async def prepared(home: Path) -> AsyncIterator[Path]:
    """A state dir with a machine in every state that matters, then closed: as a
    daemon starting at boot finds it."""
    engine = await Engine.open(home)
    try:
        for name in ("stopped", "crashed", "failed", "off", "broken"):
            await engine.create_machine(spec(name, autostart=name != "off"))
        await engine.create_machine(spec("inst-1", autostart=True, service="inst"))
        # recorded as booting, its process gone (the host rebooted): recovery crashes it
        await engine.transition("crashed", Verb.BOOTING, message="starting")
        await engine.transition("failed", Verb.BOOTING, message="starting")
        await engine.transition("failed", Verb.FAILED, reason="gave up")
    finally:
        await engine.close()
    (home / "machines" / "broken" / "machine.toml").write_text("autostart = yes\n")
    yield home


async def test_stopped_and_crashed_start_failed_broken_and_others_do_not(
        prepared: Path, driver: FakeDriver) -> None:
    engine = await Engine.open(prepared)
    try:
        assert engine.projection.state_of("broken") is S.BROKEN
        async with supervisor(engine, driver).running(recover=recover_machines) as sup:
            assert engine.projection.state_of("crashed") is S.CRASHED  # recovery ran first
            assert await autostart_machines(sup) == ["crashed", "stopped"]
            await wait_state(engine, "stopped", S.READY)
            await wait_state(engine, "crashed", S.READY)
            assert driver.starts == {"stopped": 1, "crashed": 1}
            states = {n: engine.projection.state_of(n) for n in ("failed", "off", "inst-1")}
            assert states == {"failed": S.FAILED, "off": S.STOPPED, "inst-1": S.STOPPED}
        events = autostart_events(engine)
        assert set(events) == {"stopped", "crashed"}
        assert events["crashed"] == [(AUTOSTART_TYPE, "starting at daemon start-up "
                                      "(autostart = true; was crashed)")]
        assert engine.machine("crashed").reason is None  # a fresh boot, not still crashed
    finally:
        await engine.close()
    # the crash that recovery found is on record before the autostart says why it boots
    verbs = [e.type.rsplit(".", 1)[-1] for e in read_log(engine.dirs.event_log).events
             if e.subject == "crashed"]
    assert verbs[-4:] == ["crashed", "autostart", "booting", "ready"]
    assert GONE in [e.data.get("reason") for e in read_log(engine.dirs.event_log).events
                    if e.subject == "crashed"]


async def test_starts_run_in_the_background_each_on_its_own(
        engine: Engine, driver: FakeDriver) -> None:
    for name in ("slow", "bad", "quick"):
        await engine.create_machine(spec(name, autostart=True))
    driver.script("slow").boot_delay = 1.5
    driver.script("bad").fail_boot = "kernel panic"
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        async with asyncio.timeout(1):  # returns before any boot ends
            names = await autostart_machines(sup)
        assert names == ["bad", "quick", "slow"]
        assert engine.projection.state_of("slow") is not S.READY
        await wait_state(engine, "quick", S.READY)  # not held up by the slow one
        await wait_state(engine, "bad", S.FAILED)
        await wait_state(engine, "slow", S.READY)
    events = autostart_events(engine)
    assert events["bad"][0][0] == AUTOSTART_TYPE
    assert events["bad"][1][0] == AUTOSTART_FAILED_TYPE
    assert "kernel panic" in events["bad"][1][1]
    assert [kind for kind, _ in events["slow"]] == [AUTOSTART_TYPE]


async def test_a_machine_without_autostart_stays_stopped(engine: Engine,
                                                          driver: FakeDriver) -> None:
    await engine.create_machine(spec("plain"))
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        assert await autostart_machines(sup) == []
    assert driver.starts == {}
    assert autostart_events(engine) == {}


async def test_the_api_takes_autostart_and_refuses_a_non_boolean(api: Api,
                                                                  engine: Engine) -> None:
    made = await api.client.post("/v1/machines", json={"name": "vm", "autostart": True})
    assert made.status_code == 201 and made.json()["spec"]["autostart"] is True
    assert engine.store.load_spec("vm").autostart is True
    bad = await api.client.post("/v1/machines", json={"name": "vm2", "autostart": "yes"})
    assert bad.status_code == 422 and not engine.store.exists("vm2")
