"""The cell projection: a pure reducer over `dev.boxui.cell.v1.*` events."""

from __future__ import annotations

import pytest

from backend.state.cell_projection import (
    CellProjection,
    CellStage,
    CellVerb,
    IllegalCellTransitionError,
    new_cell_event,
)
from backend.state.events import CloudEvent, new_instance_event
from backend.state.lifecycle import Verb

ART = {"guest_path": "/out/a", "host_path": "/tmp/a", "size_bytes": 3, "sha256": "ab" * 32}


def story(cell: str = "c1", name: str = "cell-c1") -> list[CloudEvent]:
    return [
        new_cell_event(cell, name, CellVerb.STARTED, argv=["true"], source="default"),
        new_cell_event(cell, name, CellVerb.MATERIALIZED, how="cold boot"),
        new_cell_event(cell, name, CellVerb.INPUTS_COPIED, files=[]),
        new_cell_event(cell, name, CellVerb.COMMAND_COMPLETED, exit_code=0),
        new_cell_event(cell, name, CellVerb.EXPORTED, artifacts=[ART]),
        new_cell_event(cell, name, CellVerb.DESTROYED, kept=False),
    ]


def test_happy_path_ends_destroyed_and_succeeded() -> None:
    projection = CellProjection()
    for event in story():
        assert projection.apply(event)
    cell = projection.get("c1")
    assert cell is not None
    assert (cell.stage, cell.outcome, cell.exit_code) == (CellStage.DESTROYED, "succeeded", 0)
    assert cell.argv == ["true"] and cell.events_applied == 6 and cell.ended_at is not None
    assert [a.sha256 for a in cell.artifacts] == ["ab" * 32]
    assert projection.unfinished() == []


def test_a_repeated_event_changes_nothing() -> None:
    projection = CellProjection()
    events = story()
    for event in events[:3]:
        projection.apply(event)
    before = projection.get("c1")
    assert not projection.apply(events[1])
    assert projection.get("c1") == before and projection.ignored == 1


@pytest.mark.parametrize("skip_to", [CellVerb.EXPORTED, CellVerb.COMMAND_COMPLETED,
                                     CellVerb.MATERIALIZED])
def test_an_illegal_step_is_rejected_and_leaves_the_cell_as_it_was(skip_to: CellVerb) -> None:
    projection = CellProjection()
    if skip_to is not CellVerb.MATERIALIZED:
        projection.apply(new_cell_event("c1", "n", CellVerb.STARTED, argv=["x"]))
    before = projection.get("c1")
    with pytest.raises(IllegalCellTransitionError, match="cell 'c1'"):
        projection.apply(new_cell_event("c1", "n", skip_to, exit_code=0, artifacts=[]))
    assert projection.get("c1") == before and projection.rejected == 1


def test_nothing_follows_destroyed_and_a_cell_starts_once() -> None:
    projection = CellProjection()
    for event in story():
        projection.apply(event)
    for verb in (CellVerb.DESTROYED, CellVerb.STARTED, CellVerb.COMMAND_FAILED):
        with pytest.raises(IllegalCellTransitionError):
            projection.apply(new_cell_event("c1", "cell-c1", verb))


def test_cut_off_cells_carry_their_reason() -> None:
    projection = CellProjection()
    projection.apply(new_cell_event("c1", "a", CellVerb.STARTED, argv=["x"]))
    projection.apply(new_cell_event("c2", "b", CellVerb.STARTED, argv=["y"]))
    projection.apply(new_cell_event("c2", "b", CellVerb.MATERIALIZED))
    projection.apply(new_cell_event("c2", "b", CellVerb.COMMAND_FAILED,
                                    reason="the command timed out after 1 s",
                                    outcome="timed_out"))
    assert [c.name for c in projection.unfinished()] == ["a", "b"]
    projection.apply(new_cell_event("c1", "a", CellVerb.DESTROYED,
                                    reason="interrupted: the supervisor died", kept=False))
    projection.apply(new_cell_event("c2", "b", CellVerb.DESTROYED, kept=False))
    a, b = projection.get("c1"), projection.get("c2")
    assert a is not None and b is not None
    assert (a.outcome, a.reason) == ("interrupted", "interrupted: the supervisor died")
    assert (b.outcome, b.reason, b.exit_code) == ("timed_out",
                                                  "the command timed out after 1 s", None)


def test_replay_matches_live_and_skips_bad_records_and_machine_events() -> None:
    events = story("c1", "x")
    bad = new_cell_event("c9", "y", CellVerb.EXPORTED, artifacts=[])  # never started
    machine = new_instance_event("x", Verb.CREATING, from_state=None)
    mixed = [events[0], machine, bad, *events[1:], events[2]]
    live = CellProjection()
    for event in events:
        live.apply(event)
    replayed = CellProjection.replay(mixed)
    assert replayed.cells() == live.cells()
    assert (replayed.rejected, replayed.ignored) == (1, 1)
    assert not replayed.apply(machine)  # another kind of event: not the cells'
