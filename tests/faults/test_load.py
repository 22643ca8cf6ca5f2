"""Item 12: load. 200 machines on the test double, health sampled every second, machines
restarting all the while, for 60 s; one subscriber keeps up, one reads slowly.

- Memory stays flat: the RSS after a 10 s warm-up and at the end are reported under the
  fault table, and may differ by at most 16 MiB. What is legitimately retained meanwhile
  is bounded: health history keeps at most 300 samples per machine (about 12,000 new
  samples here, ~3 MiB), and queues are bounded. A leak of anything per sample or per
  event (200 samples a second, thousands of events) would pass that bound within the run.
- The subscriber that keeps up receives every event the log recorded since it subscribed,
  in order, none missing.
- The slow subscriber is told what it missed: what it received plus the `Missed` counts it
  was given equals everything logged since it subscribed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from backend.state.engine import Engine
from backend.state.event_bus import Missed, Subscription
from backend.state.event_log import read_log
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.faults.conftest import FaultRecorder

MACHINES = 200
SECONDS = 60.0
WARMUP = 10.0
RSS_GROWTH_LIMIT = 16 << 20
CHURN = 10  # machines restarted over and over


async def _keep_up(sub: Subscription, got: list[str], drained: asyncio.Event) -> None:
    """Ends only on an empty queue once `drained` is set: every event is published before
    `drained` is set, so whatever is still queued then is read, not skipped."""
    while True:
        item = sub.get_nowait()
        if item is None:
            if drained.is_set():
                return
            await asyncio.sleep(0.005)
            continue
        assert not isinstance(item, Missed), "the subscriber that keeps up missed events"
        got.append(item.id)


async def _read_slowly(sub: Subscription, counts: dict[str, int],
                       stop: asyncio.Event) -> None:
    while not stop.is_set():
        item = sub.get_nowait()
        if isinstance(item, Missed):
            counts["missed"] += item.count
        elif item is not None:
            counts["received"] += 1
        await asyncio.sleep(0.25)
    while (item := sub.get_nowait()) is not None:  # drain what is left
        if isinstance(item, Missed):
            counts["missed"] += item.count
        else:
            counts["received"] += 1


async def _churn(sup: Supervisor, names: list[str], stop: asyncio.Event) -> int:
    rounds = 0
    while not stop.is_set():
        for name in names:
            await sup.restart_machine(name)
        rounds += 1
    return rounds


@pytest.mark.fault("12. load: 200 machines, health, slow subscriber, 60 s")
async def test_load_keeps_memory_flat_and_loses_no_event(home: Path,
                                                          fault: FaultRecorder) -> None:
    engine = await Engine.open(home)
    driver = FakeDriver()
    names = [f"m{i:03d}" for i in range(MACHINES)]
    try:
        for name in names:
            await engine.create_machine(spec(name, memory_mib=64))
        sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=fixed_accel)
        sup.health.interval = 1.0
        async with sup.running(recover=recover_machines, sample_health=True):
            for batch in range(0, MACHINES, 20):
                await asyncio.gather(*(sup.start_machine(n) for n in names[batch:batch + 20]))
            logged_before = len(read_log(engine.dirs.event_log).events)
            normal = engine.subscribe(maxsize=4096)
            slow = engine.subscribe(maxsize=8)
            stop, drained = asyncio.Event(), asyncio.Event()
            got: list[str] = []
            counts = {"received": 0, "missed": 0}
            readers = [asyncio.create_task(_keep_up(normal, got, drained)),
                       asyncio.create_task(_read_slowly(slow, counts, drained))]
            churn = asyncio.create_task(_churn(sup, names[:CHURN], stop))
            process = psutil.Process()
            await asyncio.sleep(WARMUP)
            rss_start = process.memory_info().rss
            await asyncio.sleep(SECONDS - WARMUP)
            rss_end = process.memory_info().rss
            stop.set()
            rounds = await churn
            drained.set()
            await asyncio.gather(*readers)
            normal.close()
            slow.close()
            samples = sum(len(sup.health.history.samples(n)) for n in names)
    finally:
        driver.kill_all()
        await engine.close()

    logged = [e.id for e in read_log(engine.dirs.event_log).events[logged_before:]]
    fault.cycle(rounds)
    fault.note(f"RSS after warm-up {rss_start / 2**20:.1f} MiB, at the end "
               f"{rss_end / 2**20:.1f} MiB ({(rss_end - rss_start) / 2**20:+.1f} MiB); "
               f"{len(logged)} events, slow subscriber got {counts['received']} and was "
               f"told of {counts['missed']} missed; {samples} health samples kept")
    lost = len(set(logged) - set(got))
    fault.lost(lost)
    assert got == logged, f"{lost} events never reached the subscriber that keeps up"
    assert counts["missed"] > 0, "the slow subscriber should have fallen behind"
    assert counts["received"] + counts["missed"] == len(logged)
    assert rss_end - rss_start < RSS_GROWTH_LIMIT, \
        f"RSS grew {(rss_end - rss_start) / 2**20:.1f} MiB under steady load"
    assert len(logged) > 100 and samples > MACHINES * 30
