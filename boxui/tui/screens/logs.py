"""A machine's serial console, full screen."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from boxui.tui.widgets.console_pane import ConsolePane


class LogsScreen(Screen[None]):
    BINDINGS = [("escape", "close", "Back"), ("l", "close", "Back"), ("q", "close", "Back")]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        yield ConsolePane(id="full-console")
        yield Footer()

    def on_mount(self) -> None:
        pane = self.query_one(ConsolePane)
        self.run_worker(pane.follow(self.path), group="logs", exclusive=True,
                        exit_on_error=False)

    def action_close(self) -> None:
        self.dismiss(None)
