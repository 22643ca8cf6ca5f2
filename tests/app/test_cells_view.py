"""`c` shows the cells (`boxui run`), newest first, and follows their events live."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from backend.state.cell_projection import CellVerb, new_cell_event
from boxui.tui.app import BoxuiApp
from boxui.tui.screens.cells import CellsScreen
from tests.app.conftest import MakeApp, embedded
from tests.app.pilot_helpers import SIZE, started, until


def outcomes(app: BoxuiApp) -> list[tuple[str, str]]:
    table: DataTable[str] = app.screen.query_one(DataTable)
    return [(str(table.get_row_at(i)[0]), str(table.get_row_at(i)[2]))
            for i in range(table.row_count)]


async def test_cells_view_lists_cells_and_follows_their_events(home: Path,
                                                              make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        engine = embedded(app)._engine
        assert engine is not None
        await engine.record_event(new_cell_event("a1", "cell-a", CellVerb.STARTED,
                                                 argv=["make", "test"]))
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, CellsScreen))
        await until(pilot, lambda: outcomes(app) == [("cell-a", "-")])
        for verb, data in ((CellVerb.MATERIALIZED, {}),
                           (CellVerb.COMMAND_COMPLETED, {"exit_code": 2}),
                           (CellVerb.DESTROYED, {"kept": False})):
            await engine.record_event(new_cell_event("a1", "cell-a", verb, **data))
        await engine.record_event(new_cell_event("b2", "cell-b", CellVerb.STARTED,
                                                 argv=["true"]))
        await until(pilot, lambda: outcomes(app) == [("cell-b", "-"), ("cell-a", "2")])
        table: DataTable[str] = app.screen.query_one(DataTable)
        assert "failed" in str(table.get_row_at(1)[1])
        assert str(table.get_row_at(1)[5]) == "make test"
        await pilot.press("escape")
        assert not isinstance(app.screen, CellsScreen)
