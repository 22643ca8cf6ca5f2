"""Waiting and reading helpers shared by the pilot tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot

from boxui.tui.app import BoxuiApp
from boxui.tui.screens.logs import LogsScreen
from boxui.tui.widgets.console_pane import ConsolePane
from boxui.tui.widgets.machine_table import MachineTable

SIZE = (150, 45)
#: the built-in themes, each pictured by the snapshot tests and in screenshots/
THEMES = ("boxui-dark", "boxui-light", "boxui-nord", "boxui-high-contrast")


async def until(pilot: Pilot[None], check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def cell(app: BoxuiApp, name: str, column: str) -> str:
    value = app.query_one(MachineTable).get_cell(name, column)
    return getattr(value, "plain", str(value))


def rows(app: BoxuiApp) -> list[str]:
    return app.query_one(MachineTable).row_names


async def started(pilot: Pilot[None], app: BoxuiApp) -> None:
    await until(pilot, lambda: app.backend.ready.is_set() and app._mounted)
    await pilot.pause(0.2)


async def open_logs(pilot: Pilot[None], app: BoxuiApp) -> ConsolePane:
    """`l`: the selected machine's console, full screen; its pane once it is shown."""
    await pilot.press("l")
    await until(pilot, lambda: isinstance(app.screen, LogsScreen))
    return app.screen.query_one(ConsolePane)
