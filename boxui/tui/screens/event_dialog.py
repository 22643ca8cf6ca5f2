"""One event, whole: the JSON CloudEvent exactly as the log and the API carry it, so
nothing the pane's one line leaves out (data, ids, the full reason) needs another tool."""

from __future__ import annotations

import orjson
from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from backend.state.events import CloudEvent


def event_json(event: CloudEvent) -> str:
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True),
                        option=orjson.OPT_INDENT_2).decode()


class EventDialog(ModalScreen[None]):
    BINDINGS = [("escape", "close", "Close"), ("enter", "close", "Close"),
                ("q", "close", "Close")]

    def __init__(self, event: CloudEvent) -> None:
        super().__init__()
        self.event = event
        self.text = event_json(event)

    def compose(self) -> ComposeResult:
        verb = self.event.type.rsplit(".", 1)[-1]
        with Vertical(id="dialog", classes="event-dialog"):
            yield Static(f"[b]{self.event.subject or '-'}: {verb}[/b]", classes="dialog-title")
            with VerticalScroll(id="event-json"):
                yield Static(Syntax(self.text, "json", theme="ansi_dark",
                                    word_wrap=True, background_color="default"))
            yield Static("[dim]esc or enter closes[/dim]")

    def action_close(self) -> None:
        self.dismiss(None)
