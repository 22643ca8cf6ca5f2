"""Messages between the app's workers and its widgets: facts are named in the past tense."""

from __future__ import annotations

from textual.message import Message

from backend.state.events import CloudEvent
from backend.supervision.health import HealthSample


class BackendStarted(Message):
    pass


class EventArrived(Message):
    def __init__(self, event: CloudEvent) -> None:
        super().__init__()
        self.event = event


class EventsMissed(Message):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count


class HealthSampled(Message):
    """A round of samples; a newer round makes an unprocessed older one obsolete for the
    table, so bursts coalesce (`can_replace`). History keeps every sample."""

    def __init__(self, samples: list[HealthSample]) -> None:
        super().__init__()
        self.samples = samples

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HealthSampled)


class SpecReloaded(Message):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class SpecEditRejected(Message):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__()
        self.name = name
        self.reason = reason


class WorkProgressed(Message):
    """Long work on a machine reached a new phase (e.g. the guest image's download)."""

    def __init__(self, name: str, phase: str, message: str) -> None:
        super().__init__()
        self.name = name
        self.phase = phase
        self.message = message


class TimelineRequested(Message):
    """Show the timeline of one machine or one service (the services view asks too)."""

    def __init__(self, *, machine: str | None = None, service: str | None = None) -> None:
        super().__init__()
        self.machine = machine
        self.service = service
