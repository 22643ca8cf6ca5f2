from __future__ import annotations

from backend.supervision.restart_policy import RestartTracker, should_restart


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_then_gives_up() -> None:
    clock = Clock()
    tracker = RestartTracker(clock)
    delays = []
    for _ in range(4):
        decision = tracker.record_failure()
        assert decision.restart
        delays.append(decision.delay)
        clock.now += decision.delay + 1
    assert delays == [1, 2, 4, 8]
    final = tracker.record_failure()
    assert not final.restart and final.failures == 5
    assert "gave up after 5 failures" in final.describe()


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    tracker = RestartTracker(clock)
    for _ in range(4):
        tracker.record_failure()
        clock.now += 200  # 4 failures spread over 800 s
    decision = tracker.record_failure()
    assert decision.restart and decision.failures < 5


def test_stable_run_resets_and_short_run_does_not() -> None:
    clock = Clock()
    tracker = RestartTracker(clock)
    for _ in range(3):
        tracker.record_failure()
    tracker.machine_up()
    clock.now += 10
    assert tracker.record_failure().failures == 4  # 10 s up is not stable
    tracker.machine_up()
    clock.now += 61
    decision = tracker.record_failure()
    assert decision.failures == 1 and decision.delay == 1


def test_delay_is_capped() -> None:
    clock = Clock()
    tracker = RestartTracker(clock)
    import backend.supervision.restart_policy as rp

    old = rp.BURST_LIMIT
    rp.BURST_LIMIT = 100
    try:
        delays = [tracker.record_failure().delay for _ in range(9)]
    finally:
        rp.BURST_LIMIT = old
    assert delays[-1] == 60 and max(delays) == 60


def test_policy_table() -> None:
    assert not should_restart("never", True)
    assert should_restart("on-failure", True) and not should_restart("on-failure", False)
    assert should_restart("always", False)
