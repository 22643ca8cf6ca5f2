"""`boxui demo`: every lifecycle state is acted out, and no demo guest outlives the app.

The story runs at 10x speed (a round takes about 3 s); everything else is the real app,
engine, supervisor and stand-in processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from backend.errors import BoxuiError, StateDirError
from backend.state.event_log import read_log
from backend.state.state_dir import StateDir
from boxui.tui.demo import CAST, MARKER, build_demo_app, prepare_demo_home

EVERY_STATE = {"creating", "booting", "ready", "busy", "draining", "stopping", "stopped",
               "failed"}


def states_seen(dirs: StateDir) -> set[str]:
    return {event.type.rsplit(".", 1)[-1] for event in read_log(dirs.event_log).events}


def stand_ins() -> list[psutil.Process]:
    """Our stand-in children, found by their command line as `pgrep -f` would."""
    labels = tuple(f"boxui-{actor.name},process=" for actor in CAST)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if str(os.getpid()) in cmdline and any(a.startswith(labels) for a in cmdline):
            found.append(proc)
    return found


async def test_demo_acts_out_every_state_and_leaves_no_guest(tmp_path: Path) -> None:
    dirs = prepare_demo_home(tmp_path / "demo")
    app = build_demo_app(dirs.root, speed=10)
    async with app.run_test(size=(160, 45)) as pilot:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not states_seen(dirs) >= EVERY_STATE:
            await pilot.pause(0.1)
        assert stand_ins(), "the demo guests are real processes while the app runs"
    assert states_seen(dirs) >= EVERY_STATE, states_seen(dirs)
    unexpected = [e for e in app.director.skipped if not isinstance(e, BoxuiError)]
    assert unexpected == []
    assert app.demo_driver is not None and app.demo_driver.alive() == []
    assert stand_ins() == []
    assert "crashed" not in states_seen(dirs), "closing the demo is not a crash"


def test_demo_home_is_wiped_only_when_the_demo_made_it(tmp_path: Path) -> None:
    foreign = tmp_path / "real-state"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(StateDirError, match="not made by `boxui demo`"):
        prepare_demo_home(foreign)
    assert (foreign / "keep.txt").read_text() == "precious"

    dirs = prepare_demo_home(tmp_path / "demo")
    assert (dirs.root / MARKER).is_file()
    (dirs.machines / "leftover").mkdir()
    again = prepare_demo_home(tmp_path / "demo")
    assert not (again.machines / "leftover").exists()
    assert (again.root / MARKER).is_file()
