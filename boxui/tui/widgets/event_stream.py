"""The live event stream: every CloudEvent, for all machines or only the selected one,
with a bounded history so a long session does not grow without limit.

It is a list, not a log: the highlighted event is shown whole (its message wraps instead
of being cut at the pane's edge) and `enter` opens the event itself, the JSON CloudEvent,
in a dialog. The others stay one line each, so the pane still shows many at a glance.
New events keep the newest in view unless the user has moved up to read an older one.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

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


def _one_line(text: Text) -> Text:
    line = text.copy()
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


class EventStream(OptionList):
    class Opened(Message):
        """`enter` on an event: show it whole."""

        def __init__(self, event: CloudEvent) -> None:
            super().__init__()
            self.event = event

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.history: deque[tuple[CloudEvent | None, Text]] = deque(maxlen=HISTORY)
        self.only: str | None = None
        self._shown: list[tuple[CloudEvent | None, Text]] = []
        self._expanded: int | None = None

    def add(self, event: CloudEvent, colour: str) -> None:
        self._append((event, event_text(event, colour)))

    def note(self, message: str) -> None:
        self._append((None, Text(f"{datetime.now().strftime('%H:%M:%S')} {message}",
                                 style="italic")))

    def _append(self, entry: tuple[CloudEvent | None, Text]) -> None:
        self.history.append(entry)
        event = entry[0]
        if self.only is not None and (event is None or event.subject != self.only):
            return
        following = self.highlighted is None or self.highlighted >= len(self._shown) - 1
        self._shown.append(entry)
        self.add_option(Option(_one_line(entry[1])))
        if len(self._shown) > HISTORY:
            self._shown.pop(0)
            self.remove_option_at_index(0)
            self._expanded = None if self._expanded in (None, 0) else self._expanded - 1
        if following:
            self.highlighted = len(self._shown) - 1
            self.scroll_end(animate=False, immediate=False)

    def focus_on(self, machine: str | None) -> None:
        """Show all machines (None) or one, redrawn from the kept history."""
        self.only = machine
        self._shown = [(event, text) for event, text in self.history
                       if machine is None or (event is not None and event.subject == machine)]
        self._expanded = None
        self.set_options(Option(_one_line(text)) for _, text in self._shown)
        if self._shown:
            self.highlighted = len(self._shown) - 1
            self.scroll_end(animate=False, immediate=False)
        self.border_title = f"events: {machine}" if machine else "events: all machines"

    def watch_highlighted(self, highlighted: int | None) -> None:
        """The highlighted event wraps to show its whole message; the one before folds."""
        super().watch_highlighted(highlighted)
        if highlighted == self._expanded:
            return
        if self._expanded is not None and self._expanded < len(self._shown):
            self.replace_option_prompt_at_index(
                self._expanded, _one_line(self._shown[self._expanded][1]))
        self._expanded = highlighted
        if highlighted is not None and highlighted < len(self._shown):
            self.replace_option_prompt_at_index(highlighted, self._shown[highlighted][1])

    def action_select(self) -> None:
        index = self.highlighted
        if index is not None and index < len(self._shown):
            event = self._shown[index][0]
            if event is not None:
                self.post_message(self.Opened(event))
