"""The live event stream: every CloudEvent, for all machines or only the selected one,
with a bounded history so a long session does not grow without limit."""

from __future__ import annotations

from collections import deque
from datetime import datetime

from rich.text import Text
from textual.widgets import RichLog

from backend.state.events import CloudEvent

HISTORY = 500


def event_text(event: CloudEvent, colour: str) -> Text:
    when = event.time.astimezone().strftime("%H:%M:%S")
    verb = event.type.rsplit(".", 1)[-1]
    text = Text()
    text.append(f"{when} ", style="dim")
    text.append(f"{(event.subject or '-')[:16]:<16} ")
    text.append(f"{verb:<9}", style=colour)
    detail = event.message
    reason = event.data.get("reason")
    if reason and reason != detail:
        detail = f"{detail}: {reason}" if detail else str(reason)
    text.append(f" {detail}")
    return text


class EventStream(RichLog):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(max_lines=HISTORY, wrap=False, markup=False, id=id, classes=classes)
        self.history: deque[tuple[CloudEvent, Text]] = deque(maxlen=HISTORY)
        self.only: str | None = None
        self.missed = 0

    def add(self, event: CloudEvent, colour: str) -> None:
        line = event_text(event, colour)
        self.history.append((event, line))
        if self.only is None or event.subject == self.only:
            self.write(line)

    def note(self, message: str) -> None:
        self.write(Text(f"{datetime.now().strftime('%H:%M:%S')} {message}", style="italic"))

    def focus_on(self, machine: str | None) -> None:
        """Show all machines (None) or one, redrawn from the kept history."""
        self.only = machine
        self.clear()
        for event, line in self.history:
            if machine is None or event.subject == machine:
                self.write(line)
        self.border_title = f"events: {machine}" if machine else "events: all machines"
