from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.errors import IllegalTransitionError
from backend.state.events import CloudEvent, new_instance_event
from backend.state.lifecycle import ALLOWED_FROM, TARGET, InstanceState, Verb
from backend.state.projection import Projection


def ev(name: str, verb: Verb, **kw: object) -> CloudEvent:
    return new_instance_event(name, verb, from_state=None, **kw)  # type: ignore[arg-type]


def test_full_lifecycle() -> None:
    p = Projection()
    path = [Verb.CREATING, Verb.CREATED, Verb.BOOTING, Verb.READY, Verb.BUSY, Verb.IDLE,
            Verb.DRAINING, Verb.STOPPING, Verb.STOPPED]
    for verb in path:
        assert p.apply(ev("vm", verb))
    assert p.state_of("vm") is InstanceState.STOPPED
    assert p.get("vm") is not None and p.get("vm").ever_started  # type: ignore[union-attr]
    p.apply(ev("vm", Verb.DELETED))
    assert p.state_of("vm") is None


def test_duplicate_event_is_ignored_and_counted() -> None:
    p = Projection()
    e = ev("vm", Verb.CREATING)
    assert p.apply(e) is True
    assert p.apply(e) is False
    assert p.snapshot().ignored == 1 and p.snapshot().applied == 1


def test_illegal_transition_names_state_event_and_machine() -> None:
    p = Projection()
    p.apply(ev("web", Verb.CREATING))
    before = p.snapshot()
    bad = ev("web", Verb.READY)
    with pytest.raises(IllegalTransitionError) as info:
        p.apply(bad)
    text = str(info.value)
    assert "'web'" in text and "'creating'" in text and "dev.boxui.instance.v1.ready" in text
    after = p.snapshot()
    assert after.machines == before.machines
    assert after.rejected == 1
    # a rejected id is not remembered: a later legal use of it is not mistaken for a repeat
    assert p.apply(ev("web", Verb.CREATED))


def test_reason_kept_for_failure_states() -> None:
    p = Projection()
    for verb in (Verb.CREATING, Verb.CREATED, Verb.BOOTING):
        p.apply(ev("vm", verb))
    p.apply(ev("vm", Verb.CRASHED, reason="process gone while boxui was down"))
    m = p.get("vm")
    assert m is not None and m.reason == "process gone while boxui was down"


def test_snapshot_counts_by_state() -> None:
    p = Projection()
    for name in ("a", "b", "c"):
        p.apply(ev(name, Verb.CREATING))
    p.apply(ev("a", Verb.CREATED))
    snap = p.snapshot()
    assert snap.by_state == {"creating": 2, "stopped": 1}
    assert snap.machines["a"].state is InstanceState.STOPPED
    assert snap.applied == 4


def test_other_event_kinds_are_skipped() -> None:
    p = Projection()
    other = CloudEvent(id="x", source="/t", type="dev.boxui.health.v1.sample",
                       time=ev("a", Verb.CREATING).time, subject="a")
    assert p.apply(other) is False
    assert p.snapshot().applied == 0


names = st.sampled_from(["a", "b", "c"])
verbs = st.sampled_from(list(Verb))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(names, verbs), max_size=60), st.randoms())
def test_random_orders_replay_to_the_live_state(
    steps: list[tuple[str, Verb]], rnd: random.Random
) -> None:
    live = Projection()
    accepted: list[CloudEvent] = []
    for name, verb in steps:
        event = ev(name, verb)
        before = live.state_of(name)
        try:
            live.apply(event)
        except IllegalTransitionError:
            assert live.state_of(name) == before, "a rejected event changed state"
            assert before not in ALLOWED_FROM[verb]
            continue
        assert before in ALLOWED_FROM[verb]
        assert live.state_of(name) == TARGET[verb]
        accepted.append(event)
    # replay with every event delivered again at random places: duplicates change nothing
    noisy = list(accepted)
    for event in accepted:
        noisy.insert(rnd.randint(0, len(noisy)), event)
    noisy.sort(key=lambda e: accepted.index(e))  # keep causal order, duplicates adjacent
    replayed = Projection.replay(noisy)
    assert replayed.snapshot().machines == live.snapshot().machines
    assert replayed.snapshot().ignored == len(accepted)
    assert Projection.replay(accepted).snapshot() == live.snapshot().model_copy(
        update={"rejected": 0}
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, verbs), max_size=40), st.randoms())
def test_shuffled_events_never_reach_an_unknown_state(
    steps: list[tuple[str, Verb]], rnd: random.Random
) -> None:
    events = [ev(n, v) for n, v in steps]
    rnd.shuffle(events)
    p = Projection.replay(events)
    snap = p.snapshot()
    assert snap.applied + snap.rejected == len(events)
    for machine in snap.machines.values():
        assert machine.state in set(InstanceState)


# --- interruptions: unresponsive and unhealthy (issue 19) ---------------------------------


def running(p: Projection, name: str, *then: Verb) -> None:
    for verb in (Verb.CREATING, Verb.CREATED, Verb.BOOTING, Verb.READY, *then):
        p.apply(ev(name, verb))


@pytest.mark.parametrize(("before", "interruptions", "after"), [
    ((), (Verb.UNRESPONSIVE,), InstanceState.READY),
    ((Verb.BUSY,), (Verb.UNRESPONSIVE,), InstanceState.READY),  # its commands may be over
    ((Verb.DRAINING,), (Verb.UNRESPONSIVE,), InstanceState.DRAINING),
    ((), (Verb.UNHEALTHY,), InstanceState.READY),
    ((Verb.BUSY,), (Verb.UNHEALTHY, Verb.UNRESPONSIVE), InstanceState.READY),
])
def test_recovered_resumes_where_the_interruption_found_it(
        before: tuple[Verb, ...], interruptions: tuple[Verb, ...], after: InstanceState) -> None:
    p = Projection()
    running(p, "vm", *before)
    events = []
    for verb in interruptions:
        events.append(ev("vm", verb, reason="QMP did not answer"))
        p.apply(events[-1])
    assert p.state_of("vm") is TARGET[interruptions[-1]]
    assert p.get("vm").reason == "QMP did not answer"  # type: ignore[union-attr]
    p.apply(ev("vm", Verb.RECOVERED))
    assert p.state_of("vm") is after
    assert p.get("vm").reason is None  # type: ignore[union-attr]


def test_replay_resumes_to_the_same_state() -> None:
    p = Projection()
    log = [ev("vm", v) for v in (Verb.CREATING, Verb.CREATED, Verb.BOOTING, Verb.READY,
                                 Verb.DRAINING, Verb.UNRESPONSIVE, Verb.RECOVERED)]
    for event in log:
        p.apply(event)
    assert Projection.replay(log).snapshot().machines == p.snapshot().machines
    assert p.state_of("vm") is InstanceState.DRAINING


def test_interrupted_machine_can_stop_crash_or_fail_but_not_drain() -> None:
    for verb in (Verb.STOPPING, Verb.CRASHED, Verb.FAILED):
        for interruption in (Verb.UNRESPONSIVE, Verb.UNHEALTHY):
            p = Projection()
            running(p, "vm", interruption)
            assert p.apply(ev("vm", verb))
    p = Projection()
    running(p, "vm", Verb.UNRESPONSIVE)
    for verb in (Verb.DRAINING, Verb.BUSY, Verb.UNHEALTHY, Verb.READY):
        with pytest.raises(IllegalTransitionError):
            p.apply(ev("vm", verb))
