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
    """A machine on `host` changed (its snapshot holds the new state already)."""

    def __init__(self, host: str, event: CloudEvent) -> None:
        super().__init__()
        self.host = host
        self.event = event


class HostHealthSampled(Message):
    """New health samples of these machines of `host` (kept in its snapshot)."""

    def __init__(self, host: str, names: list[str]) -> None:
        super().__init__()
        self.host = host
        self.names = names
