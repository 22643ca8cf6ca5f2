"""Screens as pictures: the main screen in every built-in theme, the new-machine form
with errors, the delete dialog, the help screen, the empty first screen and an event
opened whole.

Deterministic by construction: the app's clock and the backend's `now` are frozen, SSH
ports are handed out in order, the fake driver boots in a fixed order, health sampling is
off, the time zone is UTC and no cursor blinks. Update on purpose with
`bin/test tests/app/test_snapshots.py --snapshot-update` (or `bin/screenshots`, which
also refreshes `screenshots/`), and look at the pictures before committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Self

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from backend.state import events as backend_events
from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.supervision import supervisor as backend_supervisor
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.themes import save_chosen_theme
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import FIXED_TIME
from tests.app.pilot_helpers import THEMES
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel

SIZE = (150, 42)


class FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Self:
        frozen = cls.fromtimestamp(FIXED_TIME, UTC)
        return frozen if tz is None else frozen.astimezone(tz)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(backend_events, "datetime", FrozenDatetime)
    ports = itertools.count(2201)
    monkeypatch.setattr(backend_supervisor, "pick_free_port", lambda *_a: next(ports))
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state dir whose path is as long on every run (pytest's tmp_path is not: its
    counter grows): the failed machine's event names its console log, and the event
    panel's scrollbar thumb follows the longest line."""
    root = Path(tempfile.mkdtemp(prefix="bxsnap-", dir="/tmp")) / "home"
    monkeypatch.setenv("BOXUI_HOME", str(root))
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture
def driver() -> Iterator[FakeDriver]:
    fake = FakeDriver()
    yield fake
    fake.kill_all()


def fleet(home: Path, theme: str | None = None) -> None:
    """Five machines; the running and failed ones are brought up by `bring_up`."""
    async def create() -> None:
        engine = await Engine.open(home)
        try:
            for name, vcpus, memory in (("api", 2, 512), ("build-1", 4, 2048),
                                        ("build-2", 4, 2048), ("db", 2, 1024),
                                        ("legacy", 1, 256)):
                await engine.create_machine(MachineSpec(name=name, vcpus=vcpus,
                                                        memory_mib=memory))
        finally:
            await engine.close()

    asyncio.run(create())
    # a hand edit gone wrong: the machine loads as broken, with the reason
    (home / "machines" / "legacy" / "machine.toml").write_text("name = 'legacy'\nvcpu = 2\n")
    if theme is not None:
        save_chosen_theme(home, theme)


def build_app(home: Path, driver: FakeDriver) -> BoxuiApp:
    options = BackendOptions(home=home, driver_factory=lambda: driver,
                             boot_files_factory=lambda _images: FakeBootFiles(),
                             accel_for=fixed_accel, sample_health=False, clock=lambda: 0.0)
    return BoxuiApp(EmbeddedBackend(options), clock=lambda: FIXED_TIME)


async def settle(pilot: Pilot[None], check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            break
        await pilot.pause(0.05)
    else:
        raise AssertionError("the app did not reach the expected state")
    await pilot.pause(0.3)


def bring_up(driver: FakeDriver) -> Callable[[Pilot[None]], Any]:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, BoxuiApp)
        await settle(pilot, lambda: app.backend.ready.is_set() and app._mounted)
        driver.script("api").fail_boot = "kernel panic: VFS: unable to mount root fs"
        for name in ("build-1", "build-2"):
            await app.backend.start(name)
        with contextlib.suppress(Exception):
            await app.backend.start("api")
        table = app.query_one(MachineTable)
        await settle(pilot, lambda: table.row_count == 5
                     and table.get_cell("build-2", "state") == "ready"
                     and table.get_cell("api", "state") == "failed")
        app.clear_notifications()
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("theme", THEMES)
def test_main_screen(theme: str, home: Path, driver: FakeDriver, frozen: None,
                     snap_compare: Any) -> None:
    fleet(home, theme)
    assert snap_compare(build_app(home, driver), terminal_size=SIZE,
                        run_before=bring_up(driver))


def test_new_machine_form_with_an_error(home: Path, driver: FakeDriver, frozen: None,
                                        snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("n")
        await pilot.pause(0.2)
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False
        await pilot.press(*"Build/1")
        await pilot.press("tab", "backspace", "0")
        screen = pilot.app.screen
        screen.query_one("#mounts", Input).value = "/nonexistent-boxui:/src"
        screen.query_one("#ports", Input).value = "8080:80 70000"
        await pilot.pause(0.2)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_delete_dialog(home: Path, driver: FakeDriver, frozen: None,
                       snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("down", "down", "down")  # db: pids would differ run to run
        await pilot.press("ctrl+d")
        await pilot.pause(0.2)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_help_screen(home: Path, driver: FakeDriver, frozen: None,
                     snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_empty_first_screen(home: Path, driver: FakeDriver, frozen: None,
                            snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, BoxuiApp)
        await settle(pilot, lambda: app.backend.ready.is_set() and app._images is not None)
        app.clear_notifications()
        await pilot.pause(0.2)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_event_dialog(home: Path, driver: FakeDriver, frozen: None,
                      monkeypatch: pytest.MonkeyPatch, snap_compare: Any) -> None:
    ids = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4",
                        lambda: f"00000000-0000-4000-8000-{next(ids):012d}")
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        events = pilot.app.query_one(EventStream)
        events.focus()
        await pilot.press("end")
        # the failed boot: its reason is longer than the pane is wide
        failed = max(i for i, (event, _) in enumerate(events._shown)
                     if event is not None and event.type.endswith(".failed"))
        events.highlighted = failed
        await pilot.pause(0.2)
        await pilot.press("enter")
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)
