from __future__ import annotations

from backend.state.event_bus import EventBus, Missed
from backend.state.events import CloudEvent, new_instance_event
from backend.state.lifecycle import Verb


def events(n: int, name: str = "vm") -> list[CloudEvent]:
    return [new_instance_event(f"{name}", Verb.CREATING, from_state=None, message=str(i))
            for i in range(n)]


def drain(sub) -> list[object]:  # type: ignore[no-untyped-def]
    out = []
    while (item := sub.get_nowait()) is not None:
        out.append(item)
    return out


async def test_slow_subscriber_is_told_what_it_missed() -> None:
    bus = EventBus()
    fast = bus.subscribe(maxsize=100)
    slow = bus.subscribe(maxsize=4)
    batch = events(10)
    for e in batch:
        bus.publish(e)  # never blocks, whatever the slow one does
    assert drain(fast) == batch
    got = drain(slow)
    assert got[:4] == batch[:4]
    assert got[4] == Missed(6)
    assert slow.total_missed == 6
    more = events(3)
    for e in more:
        bus.publish(e)
    assert drain(slow) == more


async def test_missed_notice_comes_in_order() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=3)
    batch = events(6)
    for e in batch[:5]:
        bus.publish(e)
    assert await slow.get() == batch[0]  # one slot free: not room for notice + event
    bus.publish(batch[5])
    assert await slow.get() == batch[1]
    assert await slow.get() == batch[2]
    assert await slow.get() == Missed(3)
    assert slow.get_nowait() is None


async def test_filter_by_machine_and_unsubscribe() -> None:
    bus = EventBus()
    only_a = bus.subscribe(machine="a")
    for e in events(2, "a") + events(2, "b"):
        bus.publish(e)
    assert [e.subject for e in drain(only_a)] == ["a", "a"]  # type: ignore[attr-defined]
    only_a.close()
    assert bus.subscriber_count == 0
