"""The machine table as a person uses it: keys move the cursor, a header click sorts,
the cursor stays on its machine across sorts, and the detail pane and console follow
the cursor (also when the selected machine goes away)."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from boxui.tui.app import BoxuiApp
from boxui.tui.widgets.console_pane import ConsolePane
from boxui.tui.widgets.detail_pane import DetailPane
from boxui.tui.widgets.machine_table import COLUMNS, MachineTable
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, rows, started, until


def detail_title(app: BoxuiApp) -> str:
    return str(app.query_one(DetailPane).query_one("#detail-text", Static).render()) \
        .splitlines()[0]


async def test_cursor_sort_and_selection_follow_each_other(home: Path, make_app: MakeApp) -> None:
    await seed(home, "a-small", vcpus=1)
    await seed(home, "b-big", vcpus=8)
    await seed(home, "c-mid", vcpus=4)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        table = app.query_one(MachineTable)
        assert rows(app) == ["a-small", "b-big", "c-mid"]
        await pilot.press("down")
        assert table.selected_name == "b-big"
        await until(pilot, lambda: detail_title(app) == "b-big")
        await until(pilot, lambda: app.query_one(ConsolePane).border_title == "console: b-big")
        # click the CPUS header: sorted by vcpus, the cursor stays on b-big
        cpus = [c.key for c in COLUMNS].index("vcpus")
        x = 1 + sum(c.width + 2 for c in COLUMNS[:cpus]) + 2
        await pilot.click(MachineTable, offset=(x, 1))
        assert rows(app) == ["a-small", "c-mid", "b-big"]
        assert table.selected_name == "b-big"
        await pilot.click(MachineTable, offset=(x, 1))  # again: reversed
        assert rows(app) == ["b-big", "c-mid", "a-small"]
        await pilot.press("end")
        assert table.selected_name == "a-small"
        await until(pilot, lambda: detail_title(app) == "a-small")
        await pilot.click(MachineTable, offset=(3, 3))  # the second row
        assert table.selected_name == "c-mid"
        # the selected machine is deleted: the cursor moves on and the details follow
        await app.backend.delete("c-mid")
        await until(pilot, lambda: rows(app) == ["b-big", "a-small"])
        await until(pilot, lambda: detail_title(app) == table.selected_name)
