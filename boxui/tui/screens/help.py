"""Every key, in one place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("n", "new machine"),
    ("s", "start the selected machine"),
    ("x", "stop it (ACPI power-off)"),
    ("r", "restart it"),
    ("ctrl+d", "delete it (asks first)"),
    ("e", "edit its machine.toml in $EDITOR"),
    ("S", "SSH into it (boxui keeps supervising)"),
    ("l", "full-screen console log"),
    ("v", "services, with their instances"),
    ("a", "events: all machines / selected machine"),
    ("tab", "to the events: the highlighted one drawn whole"),
    ("enter", "(events) the event as its JSON CloudEvent; esc follows"),
    ("/", "filter by name or state (esc clears)"),
    ("o", "sort by the next column (or click a header)"),
    ("t", "next theme"),
    ("ctrl+p", "command palette: every action by name"),
    ("?", "this help"),
    ("q", "quit (machines keep running)"),
]


def help_text() -> str:
    rows = [f"  [b]{key:<8}[/b] {what}" for key, what in KEYS]
    return "[b]boxui keys[/b]\n\n" + "\n".join(rows) + "\n\n[dim]esc or ? closes[/dim]"


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape", "close", "Close"), ("question_mark", "close", "Close"),
                ("q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(help_text())

    def action_close(self) -> None:
        self.dismiss(None)
