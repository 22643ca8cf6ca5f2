"""Fan-out of live events to subscribers (the app, followers) through bounded queues.

The supervisor must never wait on a slow reader: a full queue drops the event for that
subscriber only and counts it, and the subscriber is told how many it missed, in order,
before the next event it does receive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from backend.state.events import CloudEvent

DEFAULT_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class Missed:
    """Stands in the stream where `count` events were dropped for this subscriber."""

    count: int


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int, machine: str | None) -> None:
        if maxsize < 2:
            raise ValueError("a subscription queue needs room for at least 2 items")
        self._bus = bus
        self._queue: asyncio.Queue[CloudEvent | Missed] = asyncio.Queue(maxsize)
        self.machine = machine
        self.pending_missed = 0
        self.total_missed = 0
        self.closed = False

    def _offer(self, event: CloudEvent) -> None:
        if self.machine is not None and event.subject != self.machine:
            return
        free = self._queue.maxsize - self._queue.qsize()
        if self.pending_missed:
            if free < 2:
                self._drop()
                return
            self._queue.put_nowait(Missed(self.pending_missed))
            self.pending_missed = 0
        elif free < 1:
            self._drop()
            return
        self._queue.put_nowait(event)

    def _drop(self) -> None:
        self.pending_missed += 1
        self.total_missed += 1

    async def get(self) -> CloudEvent | Missed:
        if self._queue.empty() and self.pending_missed:
            count, self.pending_missed = self.pending_missed, 0
            return Missed(count)
        return await self._queue.get()

    def get_nowait(self) -> CloudEvent | Missed | None:
        if self._queue.empty():
            if self.pending_missed:
                count, self.pending_missed = self.pending_missed, 0
                return Missed(count)
            return None
        return self._queue.get_nowait()

    def close(self) -> None:
        self.closed = True
        self._bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[CloudEvent | Missed]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[CloudEvent | Missed]:
        while not self.closed:
            yield await self.get()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []

    def subscribe(
        self, *, maxsize: int = DEFAULT_QUEUE_SIZE, machine: str | None = None
    ) -> Subscription:
        sub = Subscription(self, maxsize, machine)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    def publish(self, event: CloudEvent) -> None:
        for sub in list(self._subscribers):
            sub._offer(event)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
