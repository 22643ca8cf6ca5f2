"""A machine's event redraws its own row (and the header) unless the rows shown change:
then the table is reconciled. Both paths must keep the screen what the events say."""

from __future__ import annotations

from pathlib import Path

from boxui.tui.app import BoxuiApp
from boxui.tui.widgets.status_header import StatusHeader
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, cell, rows, started, until


def header(app: BoxuiApp) -> str:
    return str(app.query_one(StatusHeader).render())


async def test_events_update_their_row_or_what_the_filter_keeps(home: Path,
                                                                make_app: MakeApp) -> None:
    await seed(home, "a", "b")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        # a row shown: its cells and the header follow the machine's events
        await app.backend.start("b")
        await until(pilot, lambda: cell(app, "b", "state") == "ready")
        await until(pilot, lambda: "1 ready" in header(app) and "1 stopped" in header(app))
        assert cell(app, "b", "ssh") != "-"

        # a filter on the state: the events add and drop the rows it keeps
        app.set_filter("machines", "~^ready$")
        assert rows(app) == ["b"]
        await app.backend.start("a")
        await until(pilot, lambda: rows(app) == ["a", "b"])
        assert cell(app, "a", "state") == "ready"
        await app.backend.stop("b")
        await until(pilot, lambda: rows(app) == ["a"])
        await until(pilot, lambda: "1 ready" in header(app) and "1 stopped" in header(app))
