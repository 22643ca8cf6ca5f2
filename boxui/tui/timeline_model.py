"""A machine's (or a service's) life as lanes of state spans and marks, from its events.

Built from the event log rather than from what the app saw, so the timeline covers the
time before the app opened too, and a replay draws the same picture as the live session
it recorded. Pure data: the widget only maps these onto cells.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from backend.state.events import CloudEvent, verb_of
from backend.state.lifecycle import TARGET, Verb

SERVICE_PREFIX = "dev.boxui.service.v1."

MarkKind = Literal["crash", "restart", "adopt", "scale", "fail"]

#: the glyph of each mark, drawn over the lane (or, for scale requests, the axis)
MARK_GLYPHS: dict[str, str] = {
    "crash": "✖", "fail": "!", "restart": "↻", "adopt": "◆", "scale": "▼",
}


@dataclass(frozen=True)
class Span:
    start: float
    state: str


@dataclass(frozen=True)
class Mark:
    at: float
    kind: MarkKind
    text: str


@dataclass
class Lane:
    """One machine: its state from `spans[i].start` until the next span starts; after
    `ended` (deleted) it no longer exists."""

    name: str
    spans: list[Span] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    ended: float | None = None
    _starts: list[float] = field(default_factory=list, repr=False)
    _booted: bool = field(default=False, repr=False)

    def state_at(self, moment: float) -> str | None:
        """The state at `moment`, or None before the machine existed or after it went."""
        if self.ended is not None and moment >= self.ended:
            return None
        index = bisect.bisect_right(self._starts, moment) - 1
        return self.spans[index].state if index >= 0 else None

    def add(self, at: float, verb: Verb, to: str | None, message: str) -> None:
        if to is None:  # deleted
            self.ended = at
            return
        if self.ended is not None:  # a machine of the same name again: a new life
            self.ended = None
        if verb is Verb.BOOTING:
            if self._booted:
                self.marks.append(Mark(at, "restart", f"restarted: {message}"))
            self._booted = True
        elif verb is Verb.CRASHED:
            self.marks.append(Mark(at, "crash", f"crashed: {message}"))
        elif verb is Verb.FAILED:
            self.marks.append(Mark(at, "fail", f"failed: {message}"))
        elif verb is Verb.ADOPTED:
            self.marks.append(Mark(at, "adopt", f"re-adopted: {message}"))
        self.spans.append(Span(at, to))
        self._starts.append(at)


@dataclass
class Timeline:
    title: str
    lanes: list[Lane]
    #: marks of the whole subject (a service's scale requests), drawn on the axis
    marks: list[Mark]
    start: float
    end: float

    def all_marks(self) -> list[tuple[str, Mark]]:
        """Every mark with the lane it belongs to ("" for the subject's own), by time."""
        found = [(lane.name, mark) for lane in self.lanes for mark in lane.marks]
        found += [("", mark) for mark in self.marks]
        return sorted(found, key=lambda pair: pair[1].at)


def belongs(event: CloudEvent, *, machine: str | None, service: str | None) -> bool:
    if machine is not None:
        return event.subject == machine and verb_of(event.type) is not None
    if event.type.startswith(SERVICE_PREFIX):
        return event.subject == service
    return verb_of(event.type) is not None and event.data.get("service") == service


def build_timeline(events: Iterable[CloudEvent], *, machine: str | None = None,
                   service: str | None = None, now: float | None = None) -> Timeline:
    """The timeline of `machine`, or of every instance `service` ever had (instance
    events carry their service's name, so deleted instances keep their lanes)."""
    if (machine is None) == (service is None):
        raise ValueError("a timeline is of one machine or one service")
    lanes: dict[str, Lane] = {}
    marks: list[Mark] = []
    first = last = None
    for event in events:
        if not belongs(event, machine=machine, service=service):
            continue
        at = event.time.timestamp()
        first = at if first is None else min(first, at)
        last = at if last is None else max(last, at)
        verb = verb_of(event.type)
        if verb is None:
            if event.type.endswith((".scaled", ".created")):
                marks.append(Mark(at, "scale", scale_text(event)))
            continue
        name = event.subject or ""
        target = TARGET[verb]
        raw_to = event.data.get("to", target.value if target is not None else None)
        lane = lanes.setdefault(name, Lane(name))
        lane.add(at, verb, str(raw_to) if raw_to is not None else None, event.message)
    end = max(now or 0.0, last or 0.0) or (now or 0.0)
    start = first if first is not None else end
    title = f"machine {machine}" if machine is not None else f"service {service}"
    return Timeline(title, sorted(lanes.values(), key=lambda lane: lane.spans[0].start
                                  if lane.spans else 0.0), marks, start, end)


def scale_text(event: CloudEvent) -> str:
    data = event.data
    if event.type.endswith(".created"):
        return f"created with {data.get('replicas', '?')} replicas"
    return f"scale {data.get('from', '?')} → {data.get('to', '?')}"
