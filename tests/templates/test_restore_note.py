"""What `boxui info` says about a restored machine, part by part."""

from __future__ import annotations

from backend.state.runtime_record import RuntimeRecord
from backend.templates.restore_plan import SHARED_STATE_CAVEAT, shared_state_note


def test_a_machine_not_restored_has_no_note() -> None:
    assert shared_state_note(None, RuntimeRecord()) is None


def test_each_part_says_done_failed_or_not_yet() -> None:
    record = RuntimeRecord(restored_from="snap:worker@abc", rng_reseeded=True,
                           clock_set=False, clock_note="the guest refused clock_settime")
    note = shared_state_note(None, record)
    assert note == (
        f"{SHARED_STATE_CAVEAT} (snap:worker@abc); "
        "its kernel RNG was re-seeded with fresh host entropy at restore; "
        "its clock could NOT be set (the guest refused clock_settime): it runs from the "
        "moment the snapshot was saved; "
        "its hostname is not set yet")
