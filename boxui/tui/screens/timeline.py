"""`T`: the selected machine's, or service's, life over time.

Read from the event log through the backend (so it shows the past, and works the same
over the embedded engine, a daemon or a replay), then kept current from the backend's
live event feed; a one-second tick only moves "now" while the view follows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from backend.state.event_bus import Missed
from backend.state.events import CloudEvent
from boxui.tui.backend import AppBackend
from boxui.tui.timeline_model import MARK_GLYPHS, Timeline, belongs, build_timeline
from boxui.tui.widgets.timeline_view import GLYPHS, TimelineView

StateColour = Callable[[str], str]

#: how much of the log the timeline reads (the API's own maximum)
HISTORY_LIMIT = 10_000
LEGEND_STATES = ("creating", "booting", "ready", "busy", "draining", "stopping", "stopped",
                 "failed", "crashed", "unhealthy")
MARK_WORDS = {"crash": "crash", "fail": "failed boot", "restart": "restart",
              "adopt": "re-adopted", "scale": "scale request"}
SHOWN_MARKS = 4


def legend(colour: StateColour) -> Text:
    text = Text()
    for state in LEGEND_STATES:
        text.append(GLYPHS[state] * 2, style=colour(state) or "")
        text.append(f" {state}  ")
    text.append("\n")
    for kind, word in MARK_WORDS.items():
        text.append(f"{MARK_GLYPHS[kind]} {word}  ", style="bold")
    return text


def recent_marks(timeline: Timeline, limit: int = SHOWN_MARKS) -> Text:
    text = Text()
    for lane, mark in timeline.all_marks()[-limit:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(mark.at))
        text.append(f"{stamp} {MARK_GLYPHS[mark.kind]} ", style="bold")
        text.append(f"{lane + ': ' if lane else ''}{mark.text}\n")
    return text


class TimelineScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,T", "close", "Back"),
    ]

    DEFAULT_CSS = """
    TimelineScreen { layout: vertical; }
    #timeline-title { height: 1; padding: 0 1; background: $panel; }
    TimelineView { border: round $primary; }
    #timeline-legend { height: 2; padding: 0 1; }
    #timeline-marks { height: 5; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, backend: AppBackend, colour: StateColour, *,
                 machine: str | None = None, service: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.backend = backend
        self.colour = colour
        self.machine = machine
        self.service = service
        self.clock = clock
        self.events: list[CloudEvent] = []
        self.loaded = False
        self.view = TimelineView(build_timeline([], machine=machine, service=service,
                                                now=clock()), colour, clock=clock)

    def compose(self) -> ComposeResult:
        yield Static(id="timeline-title")
        yield self.view
        yield Static(legend(self.colour), id="timeline-legend")
        yield Static(id="timeline-marks")
        yield Footer()

    def on_mount(self) -> None:
        self.view.border_title = "timeline: reading the event log…"
        self.view.focus()
        self.set_interval(1.0, self.view.tick)
        self._follow()

    @work(group="timeline", exit_on_error=False)
    async def _follow(self) -> None:
        """Subscribe first, then read the log, so no event falls between the two; an
        event seen in both is dropped by its id."""
        subscription = self.backend.subscribe_events()
        try:
            history = await self.backend.event_history(HISTORY_LIMIT)
            seen = {event.id for event in history}
            self.events = [e for e in history if self._mine(e)]
            self.loaded = True
            self._rebuild()
            async for item in subscription:
                if isinstance(item, Missed) or item.id in seen or not self._mine(item):
                    continue
                self.events.append(item)
                self._rebuild()
        finally:
            subscription.close()

    def _mine(self, event: CloudEvent) -> bool:
        return belongs(event, machine=self.machine, service=self.service)

    def _rebuild(self) -> None:
        timeline = build_timeline(self.events, machine=self.machine, service=self.service,
                                  now=self.clock())
        self.view.set_timeline(timeline)
        lanes = len(timeline.lanes)
        self.view.border_title = (f"timeline: {timeline.title}" + (
            f" · {lanes} instance{'' if lanes == 1 else 's'}" if self.service else ""))
        self.query_one("#timeline-title", Static).update(
            f"{len(self.events)} events · +/- zoom · ←/→ scroll · home/end · wheel "
            "scrolls, ctrl+wheel zooms" if self.events else "no events yet")
        self.query_one("#timeline-marks", Static).update(recent_marks(timeline))

    def action_close(self) -> None:
        self.dismiss(None)
