"""What the followers tell the app: facts, in the past tense, posted to its queue."""

from __future__ import annotations

from textual.message import Message

from backend.state.events import CloudEvent


class HostChanged(Message):
    """A host's snapshot changed as a whole: reached, lost, re-listed, sampled."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host


class HostEventArrived(Message):
    """A machine on `host` changed (its snapshot holds the new state already).
    `new`: False when the event was shown already (loaded with the host's past)."""

    def __init__(self, host: str, event: CloudEvent, new: bool = True) -> None:
        super().__init__()
        self.host = host
        self.event = event
        self.new = new


class HostEventsLoaded(Message):
    """`host`'s recent events, read as it was reached, none shown before: its past,
    for the events pane."""

    def __init__(self, host: str, events: list[CloudEvent]) -> None:
        super().__init__()
        self.host = host
        self.events = events


class HostHealthSampled(Message):
    """New health samples of these machines of `host` (kept in its snapshot)."""

    def __init__(self, host: str, names: list[str]) -> None:
        super().__init__()
        self.host = host
        self.names = names


class HostsChanged(Message):
    """The registry (`hosts.toml`) changed: hosts were added or removed, or the file
    is no longer valid (`problem`; the hosts followed stay as they were)."""

    def __init__(self, problem: str | None = None) -> None:
        super().__init__()
        self.problem = problem
