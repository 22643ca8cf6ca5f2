"""The first screen says what to do; events are read whole; NO_COLOR draws no colour."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from textual.widgets import Static

from backend.state.machine_spec import MachineSpec
from boxui.tui.screens.event_dialog import EventDialog
from boxui.tui.widgets.event_stream import EventStream
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, rows, started, until


def hint(app: object) -> Static:
    from boxui.tui.app import BoxuiApp
    assert isinstance(app, BoxuiApp)
    return app.query_one("#empty-hint", Static)


async def test_empty_first_screen_says_what_to_do(home: Path, make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await until(pilot, lambda: "debian-12" in str(hint(app).render()))
        text = str(hint(app).render())
        assert hint(app).has_class("-shown") and hint(app).display
        for wanted in ("n", "create a machine", "default", "debian-12-build (not built yet)",
                       "boxui demo", "TCG", "boxui doctor"):
            assert wanted in text, wanted
        await app.backend.create(MachineSpec(name="first"), start=False)
        await until(pilot, lambda: rows(app) == ["first"])
        assert not hint(app).has_class("-shown")


async def test_enter_on_an_event_opens_the_whole_cloudevent(home: Path,
                                                            make_app: MakeApp) -> None:
    await seed(home, "a-machine-with-a-long-name")
    app = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await started(pilot, app)
        events = app.query_one(EventStream)
        await until(pilot, lambda: events.option_count >= 2)
        events.focus()
        await pilot.press("home")
        created = events._shown[0][0]
        assert created is not None
        # the highlighted event is drawn whole: more lines than the one-line others
        await pilot.pause(0.1)
        assert events.get_option_at_index(0).prompt is events._shown[0][1]
        assert events.get_option_at_index(1).prompt is not events._shown[1][1]
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, EventDialog))
        dialog = app.screen
        assert isinstance(dialog, EventDialog)
        assert dialog.event == created
        # the dialog shows the event exactly as the log carries it, data and all
        parsed = orjson.loads(dialog.text)
        assert parsed["id"] == created.id and parsed["subject"] == created.subject
        assert parsed["data"] == created.data and parsed["type"] == created.type
        assert created.id in app.export_screenshot()
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, EventDialog))


async def test_no_color_draws_only_greys(home: Path, make_app: MakeApp,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(home, "vm")
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        svg = app.export_screenshot()
    # less the window buttons the SVG export draws around the terminal
    colours = set(re.findall(r"#([0-9a-fA-F]{6})\b", svg)) - {"ff5f57", "febc2e", "28c840"}
    assert colours, "the screenshot has colours to check"
    assert not {c for c in colours if _saturation(c) > 8}, colours


def _saturation(hex_colour: str) -> int:
    """0 for a pure grey; the export's default text colour (#c5c8c6) is nearly one."""
    channels = [int(hex_colour[i:i + 2], 16) for i in (0, 2, 4)]
    return max(channels) - min(channels)


async def test_event_pane_stays_bounded_and_follows_the_newest(home: Path,
                                                               make_app: MakeApp) -> None:
    from datetime import UTC, datetime

    from backend.state.events import CloudEvent
    from boxui.tui.widgets.event_stream import HISTORY, TRIM

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        events = app.query_one(EventStream)
        for i in range(HISTORY + TRIM + 50):
            events.add(CloudEvent(id=str(i), source="/t", type="dev.boxui.instance.v1.ready",
                                  time=datetime.now(UTC), subject=f"m{i}",
                                  data={"message": f"event {i}"}), "green")
        await pilot.pause(0.1)
        assert HISTORY <= events.option_count <= HISTORY + TRIM
        assert events.option_count == len(events._shown)
        assert events.highlighted is None  # following: the newest in view
        assert events.scroll_y == events.max_scroll_y > 0
        last = events._shown[-1][0]
        assert last is not None and last.id == str(HISTORY + TRIM + 49)
