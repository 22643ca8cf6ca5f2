"""The keys actually in force: read from the bindings after `ui.toml`'s keymap was
applied (the app passes them in), so a rebound key shows as the user bound it; plus the
`:` commands, which are the same everywhere."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

#: keys of other widgets that the main screen's bindings do not list
PANE_KEYS = [
    ("tab", "to the events: the highlighted one drawn whole"),
    ("enter", "(events) the event as its JSON CloudEvent; esc follows"),
    ("j / k", "down / up in the machines (arrows too)"),
]


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def help_text(keys: list[tuple[str, str]], commands: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in [*keys, *PANE_KEYS]), default=8)
    rows = [f"  [b]{_escape(key):<{width}}[/b]  {_escape(what)}"
            for key, what in [*keys, *PANE_KEYS]]
    cmd_rows = [f"  [b]:{_escape(word):<{width - 1}}[/b]  {_escape(what)}"
                for word, what in commands]
    return ("[b]boxui keys[/b] (as bound now; rebind them in ui.toml \\[keys])\n\n"
            + "\n".join(rows) + "\n\n[b]commands[/b] (`:`, tab completes)\n\n"
            + "\n".join(cmd_rows) + "\n\n[dim]esc or ? closes[/dim]")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape", "close", "Close"), ("question_mark", "close", "Close"),
                ("q", "close", "Close")]

    def __init__(self, keys: list[tuple[str, str]] | None = None,
                 commands: list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.keys, self.commands = keys or [], commands or []

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="help"), VerticalScroll():
            yield Static(help_text(self.keys, self.commands))

    def action_close(self) -> None:
        self.dismiss(None)
