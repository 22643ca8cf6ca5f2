"""A machine's serial console, full screen."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer

from boxui.tui.widgets.console_pane import ConsolePane
from boxui.tui.widgets.filter_bar import FilterBar, FilteredScreen


class LogsScreen(FilteredScreen):
    VIEW = "logs"
    BINDINGS = [Binding("l", "close", "Back", show=False)]

    def __init__(self, path: Path, filters: dict[str, str] | None = None) -> None:
        super().__init__(filters)
        self.path = path

    def compose(self) -> ComposeResult:
        yield FilterBar()
        yield ConsolePane(id="full-console")
        yield Footer()

    def on_mount(self) -> None:
        pane = self.query_one(ConsolePane)
        pane.filter = self.filter
        self.run_worker(pane.follow(self.path), group="logs", exclusive=True,
                        exit_on_error=False)

    def refilter(self) -> None:
        self.query_one(ConsolePane).set_filter(self.filters.get(self.VIEW, ""))
