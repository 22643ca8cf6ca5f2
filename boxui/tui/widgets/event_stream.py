"""The live event stream: every CloudEvent, for all machines or only the selected one,
with a bounded history so a long session does not grow without limit.

It is a list, not a log: the highlighted event is shown whole (its message wraps instead
of being cut at the pane's edge) and `enter` opens the event itself, the JSON CloudEvent,
in a dialog. The others stay one line each, so the pane still shows many at a glance.

With nothing highlighted the pane follows the newest event. Focusing it highlights the
newest; the arrows move through older ones while new ones gather below; `escape`, or
leaving the pane, follows again. Following never moves the highlight: changing which
option is drawn whole makes the list measure every option again, which a burst of a
thousand events must not pay a thousand times.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from backend.state.events import CloudEvent
from boxui.tui.text_filter import TextFilter

HISTORY = 500
#: events dropped at once when the pane holds more than HISTORY + TRIM
TRIM = 100


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


def _one_line(text: Text, width: int) -> Text:
    """Cut at the pane's width (the list would wrap it otherwise); 0: not laid out yet."""
    line = text.copy()
    if width > 1:
        line.truncate(width, overflow="ellipsis")
    return line


class EventStream(OptionList):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "follow", "Follow", show=False),
    ]

    class Opened(Message):
        """`enter` on an event: show it whole."""

        def __init__(self, event: CloudEvent) -> None:
            super().__init__()
            self.event = event

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.history: deque[tuple[CloudEvent | None, Text]] = deque(maxlen=HISTORY)
        self.only: str | None = None
        self.filter = TextFilter()
        self._shown: list[tuple[CloudEvent | None, Text]] = []
        self._expanded: int | None = None
        self._width = 0

    def add(self, event: CloudEvent, colour: str) -> None:
        self._append((event, event_text(event, colour)))

    def note(self, message: str) -> None:
        self._append((None, Text(f"{datetime.now().strftime('%H:%M:%S')} {message}",
                                 style="italic")))

    def _append(self, entry: tuple[CloudEvent | None, Text]) -> None:
        self.history.append(entry)
        if not self._wanted(entry):
            return
        following = self.highlighted is None
        self._shown.append(entry)
        self.add_option(Option(_one_line(entry[1], self._width)))
        if len(self._shown) > HISTORY + TRIM:
            # in one go: removing an option re-measures every other one
            del self._shown[:TRIM]
            kept = self.highlighted
            self._redraw(None if kept is None else max(0, kept - TRIM))
        if following:
            self.scroll_end(animate=False, immediate=False)

    def on_focus(self) -> None:
        if self.highlighted is None and self._shown:
            self.highlighted = len(self._shown) - 1

    def on_blur(self) -> None:
        if self.app.screen is self.screen:  # not merely under the event's dialog
            self.action_follow()

    def action_follow(self) -> None:
        self.highlighted = None
        self.scroll_end(animate=False, immediate=False)

    def _wanted(self, entry: tuple[CloudEvent | None, Text]) -> bool:
        event, text = entry
        if self.only is not None and (event is None or event.subject != self.only):
            return False
        return self.filter.matches(text.plain, event.type if event else "")

    def focus_on(self, machine: str | None) -> None:
        """Show all machines (None) or one, redrawn from the kept history."""
        self.only = machine
        self._reselect()

    def set_filter(self, typed: str) -> None:
        """`/` in the pane: only the events whose line (or type) matches."""
        self.filter = TextFilter.parse(typed)
        self._reselect()

    def _reselect(self) -> None:
        self._shown = [entry for entry in self.history if self._wanted(entry)]
        self._expanded = None
        self._redraw(None)
        scope = f"events: {self.only}" if self.only else "events: all machines"
        self.border_title = f"{scope} {self.filter.describe()}".rstrip()

    def _redraw(self, highlighted: int | None) -> None:
        self._expanded = None
        self.set_options(Option(_one_line(text, self._width)) for _, text in self._shown)
        self.highlighted = highlighted
        if highlighted is None:
            self.scroll_end(animate=False, immediate=False)

    def on_resize(self, _event: events.Resize) -> None:
        width = self.scrollable_content_region.width
        if width != self._width:
            self._width = width
            self._redraw(self.highlighted)

    def watch_highlighted(self, highlighted: int | None) -> None:
        """The highlighted event wraps to show its whole message; the one before folds."""
        super().watch_highlighted(highlighted)
        if highlighted == self._expanded:
            return
        if self._expanded is not None and self._expanded < len(self._shown):
            self.replace_option_prompt_at_index(
                self._expanded, _one_line(self._shown[self._expanded][1], self._width))
        self._expanded = highlighted
        if highlighted is not None and highlighted < len(self._shown):
            self.replace_option_prompt_at_index(highlighted, self._shown[highlighted][1])

    def action_select(self) -> None:
        index = self.highlighted
        if index is not None and index < len(self._shown):
            event = self._shown[index][0]
            if event is not None:
                self.post_message(self.Opened(event))
