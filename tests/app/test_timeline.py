"""The lifecycle timeline: lanes, states and marks from a fixed event log, and the
widget's zoom and scroll."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.pilot import Pilot

from backend.services.service_events import SERVICE_TYPE_PREFIX
from backend.state.events import CloudEvent, instance_type
from backend.state.lifecycle import TARGET, Verb
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.recording import RecordedEvent, Recording, RecordingHeader
from boxui.tui.remote import RemoteBackend, find_daemon_backend
from boxui.tui.replay import ReplayBackend
from boxui.tui.replay_app import ReplayApp
from boxui.tui.screens.timeline import TimelineScreen
from boxui.tui.timeline_model import build_timeline
from boxui.tui.widgets.timeline_view import ZOOMS
from tests.app.conftest import seed
from tests.app.pilot_helpers import SIZE, rows, started, until
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel

T0 = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def instance(seconds: float, name: str, verb: Verb, message: str = "",
             service: str | None = None) -> CloudEvent:
    target = TARGET[verb]
    data: dict[str, object] = {"machine": name, "to": target.value if target else None,
                               "message": message or verb.value}
    if service:
        data["service"] = service
    return CloudEvent(id=f"e{next(_ids)}", source="/boxui/supervisor",
                      type=instance_type(verb), time=at(seconds), subject=name, data=data)


def scaled(seconds: float, service: str, old: int, new: int) -> CloudEvent:
    return CloudEvent(id=f"e{next(_ids)}", source="/boxui/supervisor",
                      type=SERVICE_TYPE_PREFIX + "scaled", time=at(seconds), subject=service,
                      data={"service": service, "from": old, "to": new,
                            "message": f"{old} -> {new} replicas"})


def life_of_web() -> list[CloudEvent]:
    """web-1: created, booted, crashed, restarted, re-adopted after boxui restarted,
    stopped; db-1 alongside (not web-1's)."""
    return [
        instance(0, "web-1", Verb.CREATING), instance(2, "web-1", Verb.CREATED),
        instance(5, "web-1", Verb.BOOTING), instance(9, "web-1", Verb.READY),
        instance(5, "db-1", Verb.CREATING),
        instance(40, "web-1", Verb.CRASHED, "qemu exited on signal 9"),
        instance(45, "web-1", Verb.BOOTING), instance(49, "web-1", Verb.READY),
        instance(70, "web-1", Verb.ADOPTED, "re-adopted pid 4242"),
        instance(100, "web-1", Verb.STOPPING), instance(103, "web-1", Verb.STOPPED),
    ]


def life_of_api() -> list[CloudEvent]:
    """Service api: 0 -> 3 -> 1, one instance fails to boot, one is replaced."""
    events = [scaled(0, "api", 0, 3)]
    for n, name in enumerate(("api-a1", "api-b2", "api-c3")):
        events += [instance(1 + n, name, Verb.CREATING, service="api"),
                   instance(2 + n, name, Verb.BOOTING, service="api")]
    events += [instance(8, "api-a1", Verb.READY, service="api"),
               instance(9, "api-b2", Verb.READY, service="api"),
               instance(10, "api-c3", Verb.FAILED, "kernel panic", service="api"),
               instance(20, "api-c3", Verb.DELETED, service="api"),
               scaled(60, "api", 3, 1),
               instance(61, "api-b2", Verb.DRAINING, service="api"),
               instance(64, "api-b2", Verb.STOPPING, service="api"),
               instance(66, "api-b2", Verb.STOPPED, service="api"),
               instance(67, "api-b2", Verb.DELETED, service="api")]
    return events


def test_a_machines_lane_has_its_states_and_marks() -> None:
    timeline = build_timeline(life_of_web(), machine="web-1")
    assert [lane.name for lane in timeline.lanes] == ["web-1"]
    lane = timeline.lanes[0]
    base = T0.timestamp()
    assert lane.state_at(base - 1) is None
    assert lane.state_at(base + 1) == "creating"
    assert lane.state_at(base + 20) == "ready"
    assert lane.state_at(base + 42) == "crashed"
    assert lane.state_at(base + 200) == "stopped"
    assert [(m.kind, m.at - base) for m in lane.marks] == [
        ("crash", 40), ("restart", 45), ("adopt", 70)]
    assert timeline.start == base and timeline.end == base + 103


def test_a_services_lanes_are_its_instances_past_and_present() -> None:
    timeline = build_timeline(life_of_api(), service="api")
    assert [lane.name for lane in timeline.lanes] == ["api-a1", "api-b2", "api-c3"]
    base = T0.timestamp()
    by_name = {lane.name: lane for lane in timeline.lanes}
    assert by_name["api-c3"].state_at(base + 15) == "failed"
    assert by_name["api-c3"].state_at(base + 25) is None  # deleted
    assert by_name["api-b2"].state_at(base + 62) == "draining"
    assert [m.text for m in timeline.marks] == ["scale 0 → 3", "scale 3 → 1"]
    assert [m.kind for m in by_name["api-c3"].marks] == ["fail"]


def test_one_subject_only() -> None:
    with pytest.raises(ValueError):
        build_timeline([], machine="a", service="b")


# --- the screen, over a replay of a fixed log (deterministic: no clock moves) -----------


def fixed_recording(events: list[CloudEvent]) -> Recording:
    """Every event before the recording's start: the replay opens on the final state at
    once, and its clock stands at the recording's start."""
    start = at(110)
    return Recording(header=RecordingHeader(started=start, title="a fixed log"),
                     lines=[RecordedEvent(at=(e.time - start).total_seconds(), event=e)
                            for e in events])


@pytest.fixture
def replay_home() -> Iterator[Path]:
    """As long on every run (the snapshot must not depend on pytest's counter)."""
    root = Path(tempfile.mkdtemp(prefix="bxtime-", dir="/tmp"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


def replay_app(home: Path, events: list[CloudEvent]) -> ReplayApp:
    return ReplayApp(ReplayBackend(fixed_recording(events), home, speed=1000,
                                   source="fixed.jsonl"))


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def open_timeline(app: ReplayApp, pilot: Pilot[None]) -> TimelineScreen:
    await app.replay.ready.wait()
    await pilot.pause(0.2)
    await pilot.press("T")
    for _ in range(100):
        if isinstance(app.screen, TimelineScreen) and app.screen.loaded:
            break
        await pilot.pause(0.05)
    assert isinstance(app.screen, TimelineScreen)
    await pilot.pause(0.2)
    return app.screen


async def test_keys_zoom_and_scroll(replay_home: Path) -> None:
    app = replay_app(replay_home, life_of_web())
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_timeline(app, pilot)
        view = screen.view
        fitted = view.seconds_per_cell
        assert 110 / fitted <= view.cells, "the whole history fits at first"
        await pilot.press("plus")
        assert view.seconds_per_cell == ZOOMS[ZOOMS.index(fitted) - 1]
        assert view.right is None, "zooming while following keeps following"
        await pilot.press("left")
        assert view.right is not None and view.right < view.now
        await pilot.press("end")
        assert view.right is None
        await pilot.press("home")
        left, _right = view.window()
        assert left <= view.timeline.start
        await pilot.press("minus", "minus")
        assert view.seconds_per_cell == ZOOMS[ZOOMS.index(fitted) + 1]
        await pilot.press("escape")
        assert not isinstance(app.screen, TimelineScreen)


async def test_wheel_scrolls_and_ctrl_wheel_zooms(replay_home: Path) -> None:
    app = replay_app(replay_home, life_of_web())
    async with app.run_test(size=(120, 30)) as pilot:
        view = (await open_timeline(app, pilot)).view
        fitted = view.seconds_per_cell
        await pilot.press("plus", "plus")
        view.post_message(events.MouseScrollUp(view, 40, 3, 0, -1, 0, False, False, False))
        await pilot.pause(0.1)
        assert view.right is not None, "the wheel goes back in time"
        view.post_message(events.MouseScrollDown(view, 40, 3, 0, 1, 0, False, False, True))
        await pilot.pause(0.1)
        assert view.seconds_per_cell == ZOOMS[ZOOMS.index(fitted) - 1]


def test_timeline_of_a_machine(replay_home: Path, utc: None, snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ReplayApp)
        # the whole log played and both rows in (db-1, then web-1): a key pressed
        # before then would move the cursor over rows still being added
        await app.replay.finished.wait()
        await until(pilot, lambda: len(rows(app)) == 2)
        await pilot.press("home")
        for _ in range(5):
            if app.selected == "web-1":
                break
            await pilot.press("down")
            await pilot.pause(0.05)
        assert app.selected == "web-1"
        await open_timeline(app, pilot)
        pilot.app.clear_notifications()
        await pilot.pause(0.2)

    assert snap_compare(replay_app(replay_home, life_of_web()),
                        terminal_size=(150, 42), run_before=run_before)


def test_timeline_of_a_service(replay_home: Path, utc: None, snap_compare: Any) -> None:
    log = sorted([
        *life_of_api(),
        instance(0, "api-keep", Verb.CREATING, service="api"),
        instance(1, "api-keep", Verb.BOOTING, service="api"),
        instance(4, "api-keep", Verb.READY, service="api"),
    ], key=lambda e: e.time)

    async def run_before(pilot: Pilot[None]) -> None:
        assert isinstance(pilot.app, ReplayApp)
        app = pilot.app
        await app.replay.ready.wait()
        await pilot.pause(0.2)
        await pilot.press("v")
        await pilot.pause(0.3)
        await pilot.press("T")
        for _ in range(100):
            if isinstance(app.screen, TimelineScreen) and app.screen.loaded:
                break
            await pilot.pause(0.05)
        app.clear_notifications()
        await pilot.pause(0.2)

    assert snap_compare(replay_app(replay_home, log),
                        terminal_size=(150, 42), run_before=run_before)


async def test_the_timeline_over_a_daemon_reads_its_log(home: Path) -> None:
    """The remote backend's history comes from the daemon's log, and live events follow."""
    await seed(home, "web", "db")
    driver = FakeDriver()
    daemon = EmbeddedBackend(BackendOptions(
        home=home, driver_factory=lambda: driver,
        boot_files_factory=lambda _images: FakeBootFiles(), accel_for=fixed_accel,
        sample_health=False))
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.ready.wait()
        await daemon.start("web")
        async with asyncio.timeout(10):
            while not daemon.engine.dirs.api_socket.exists():
                await asyncio.sleep(0.02)
        remote = find_daemon_backend(BackendOptions(home=home, accel_for=fixed_accel))
        assert isinstance(remote, RemoteBackend)
        app = BoxuiApp(remote)
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot, app)
            await pilot.press("down", "T")  # web
            await until(pilot, lambda: isinstance(app.screen, TimelineScreen)
                        and app.screen.loaded)
            screen = app.screen
            assert isinstance(screen, TimelineScreen)
            lane = screen.view.timeline.lanes[0]
            assert lane.name == "web"
            assert [s.state for s in lane.spans] == ["creating", "stopped", "booting",
                                                     "ready"]
            await daemon.stop("web")
            await until(pilot, lambda: screen.view.timeline.lanes[0].spans[-1].state
                        == "stopped")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        driver.kill_all()
