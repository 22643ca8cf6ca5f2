"""Cells (`boxui run`): each one's outcome, exit code, stage, command and reason, newest
first. Read from the event log through the cell projection, as `boxui cells` reads them,
so the app needs nothing more from its backend (embedded or a daemon's); reloaded when a
cell event arrives (the app calls `reload`)."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from backend.state.cell_projection import CellProjection, CellView
from backend.state.event_log import read_log
from boxui.tui.widgets.filter_bar import FilterBar, FilteredScreen

COLUMNS = ("NAME", "OUTCOME", "EXIT", "STAGE", "STARTED", "COMMAND", "ARTIFACTS", "REASON")
OUTCOME_STYLE = {"succeeded": "green", "running": "cyan", "failed": "red",
                 "timed_out": "red", "interrupted": "yellow", "cancelled": "yellow"}


def load_cells(event_log: Path) -> list[CellView]:
    return CellProjection.replay(read_log(event_log).events).cells()


def cell_row(cell: CellView) -> tuple[str, ...]:
    command = shlex.join(cell.argv)
    return (cell.name, cell.outcome, "-" if cell.exit_code is None else str(cell.exit_code),
            cell.stage.value, cell.started_at.astimezone().strftime("%H:%M:%S"),
            command if len(command) <= 40 else command[:39] + "…",
            str(len(cell.artifacts)), cell.reason or "")


class CellsScreen(FilteredScreen):
    VIEW = "cells"
    BINDINGS = [Binding("C", "close", "Back", show=False)]

    def __init__(self, event_log: Path, filters: dict[str, str] | None = None) -> None:
        super().__init__(filters)
        self._event_log = event_log
        self._cells: list[CellView] = []

    def compose(self) -> ComposeResult:
        yield FilterBar()
        table: DataTable[str] = DataTable(id="cells", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="cells-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.border_title = "cells"
        table.add_columns(*COLUMNS)
        self.reload()

    @work(exclusive=True, group="cells", exit_on_error=False)
    async def reload(self) -> None:
        self._cells = await asyncio.to_thread(load_cells, self._event_log)
        self.refilter()

    def refilter(self) -> None:
        cells, wanted = self._cells, self.filter
        table: DataTable[str] = self.query_one(DataTable)
        table.clear()
        for cell in reversed(cells):
            row = cell_row(cell)
            if not wanted.matches(" ".join(row)):
                continue
            style = OUTCOME_STYLE.get(cell.outcome, "")
            table.add_row(row[0], f"[{style}]{row[1]}[/]" if style else row[1], *row[2:],
                          key=cell.id)
        self.query_one("#cells-empty", Static).update(
            "" if cells else "no cells yet: `boxui run -- CMD` runs a command in a "
            "throwaway machine")
        table.border_title = f"cells {wanted.describe()}".rstrip()
