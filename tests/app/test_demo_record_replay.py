"""`boxui demo --script/--record/--replay`: scripts validate (or are refused naming the
step and field), a scripted session recorded and replayed ends in the same states, and
a replay is marked as one and refuses to change anything."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from backend.errors import BoxuiError
from backend.state.event_log import read_log
from boxui.tui.demo import prepare_demo_home
from boxui.tui.demo_modes import build_script_app
from boxui.tui.demo_script import DemoScript, ScriptDirector, load_script
from boxui.tui.recording import load_recording
from boxui.tui.replay import REFUSAL, ReplayBackend
from boxui.tui.replay_app import ReplayApp
from tests.app.test_timeline import fixed_recording, life_of_web
from tests.conftest import BOXUI, cli_env

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "demos").glob("*.toml"))

#: a short lifecycle on stand-ins: three created, one crashed and recovered, one stopped
SHORT = """
title = "short"
[[steps]]
do = "create"
names = ["a-1", "a-2", "a-3"]
boot_seconds = 0.5
[[steps]]
do = "wait"
until = "ready"
names = ["a-1", "a-2", "a-3"]
timeout = 20
[[steps]]
do = "crash"
names = ["a-2"]
[[steps]]
do = "wait"
until = "crashed"
names = ["a-2"]
timeout = 20
[[steps]]
do = "recover"
names = ["a-2"]
[[steps]]
do = "wait"
until = "ready"
names = ["a-2"]
timeout = 20
[[steps]]
do = "stop"
names = ["a-3"]
[[steps]]
do = "say"
text = "done"
seconds = 1
"""


def test_two_example_scripts_ship_and_validate() -> None:
    assert len(SHIPPED) >= 2
    for path in SHIPPED:
        assert load_script(path).steps, path


@pytest.mark.parametrize(("text", "expected"), [
    ('[[steps]]\ndo = "scale"\nservice = "api"\nreplicas = -1\n',
     "step 1 (scale): replicas: Input should be greater than or equal to 0"),
    ('[[steps]]\ndo = "wait"\nseconds = 1\n[[steps]]\ndo = "wait"\n',
     "step 2 (wait): give exactly one of"),
    ('[[steps]]\ndo = "explode"\n', "step 1 (explode): do: must be one of create"),
    ('[[steps]]\ndo = "create"\nnames = ["Web 1"]\n',
     "step 1 (create): names: invalid machine name 'Web 1'"),
    ('[[steps]]\ndo = "crash"\nnames = ["a"]\ncolour = "red"\n',
     "step 1 (crash): colour: Extra inputs are not permitted"),
    ('[[steps]]\ndo = "crash"\n', "step 1 (crash): give names, or service"),
    ('title = "no steps"\n', "steps: Field required"),
    ('[[steps]\n', "not valid TOML"),
])
def test_a_bad_script_is_refused_naming_step_and_field(tmp_path: Path, text: str,
                                                       expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BoxuiError) as caught:
        load_script(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_the_cli_reports_a_bad_script_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[steps]]\ndo = "scale"\nservice = "api"\n')
    done = subprocess.run([*BOXUI, "demo", "--script", str(path)], capture_output=True,
                          text=True, env=cli_env(tmp_path / "home"), timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"boxui: {path}: step 1 (scale): replicas: Field required"]
    assert not (tmp_path / "home-demo").exists()


def test_the_cli_refuses_a_bad_recording_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_text('{"format": "boxui-recording", "version": 1, "started": '
                    '"2026-11-22T11:00:00Z"}\n{"at": 1}\n')
    done = subprocess.run([*BOXUI, "demo", "--replay", str(path)], capture_output=True,
                          text=True, env=cli_env(tmp_path / "home"), timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"boxui: {path}: line 2: missing required key 'event'"]


@pytest.fixture
def short_script(tmp_path: Path) -> DemoScript:
    path = tmp_path / "short.toml"
    path.write_text(SHORT)
    return load_script(path)


async def wait_for(pilot: Pilot[None], check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


async def test_record_then_replay_reproduces_the_states(tmp_path: Path,
                                                        short_script: DemoScript) -> None:
    dirs = prepare_demo_home(tmp_path / "demo")
    recording = tmp_path / "short.jsonl"
    app = build_script_app(dirs.root, short_script, speed=4, record=recording)
    director = app.director
    assert isinstance(director, ScriptDirector)
    try:
        async with app.run_test(size=(150, 42)) as pilot:
            await wait_for(pilot, lambda: director.steps_done == 8, 60, "the script")
            await pilot.pause(0.3)  # the last events reach the recorder
            live = {m.name: m.state.value for m in app.demo_backend.machines()}
    finally:
        app.kill_guests()
    assert director.skipped == []
    assert live == {"a-1": "ready", "a-2": "ready", "a-3": "stopped"}
    assert recording.exists() and not recording.with_name("short.jsonl.part").exists()
    logged = [(e.subject, e.type) for e in read_log(dirs.event_log).events]

    played = load_recording(recording)
    assert [(line.event.subject, line.event.type) for line in played.lines] == logged
    assert played.lines[0].spec is not None, "a machine's spec comes with its first event"
    backend = ReplayBackend(played, tmp_path / "replay", speed=50, source="short.jsonl")
    replay = ReplayApp(backend)
    async with replay.run_test(size=(150, 42)) as pilot:
        await wait_for(pilot, backend.finished.is_set, 20, "the replay's end")
        await pilot.pause(0.2)
        assert {m.name: m.state.value for m in backend.machines()} == live
        assert all(m.spec is not None for m in backend.machines())
        kinds = {e.type.rsplit(".", 1)[-1] for e in await backend.event_history(100)}
        assert {"crashed", "booting", "ready", "stopped"} <= kinds


@pytest.fixture
def replay_home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="bxrepl-", dir="/tmp"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


async def test_a_replay_refuses_actions(replay_home: Path) -> None:
    backend = ReplayBackend(fixed_recording(life_of_web()), replay_home, speed=1000)
    app = ReplayApp(backend)
    async with app.run_test(size=(150, 42)) as pilot:
        await wait_for(pilot, backend.ready.is_set, 10, "the replay")
        await pilot.pause(0.2)
        await pilot.press("s")
        await wait_for(pilot, lambda: any(REFUSAL in str(n.message)
                                          for n in app._notifications), 5, "the refusal")
        assert app.actions_done == []


def test_replay_marker(replay_home: Path, snap_compare: Any,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()

    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ReplayApp)
        await wait_for(pilot, app.replay.ready.is_set, 10, "the replay")
        await pilot.pause(0.3)
        app.clear_notifications()
        await pilot.pause(0.2)

    app = ReplayApp(ReplayBackend(fixed_recording(life_of_web()), replay_home, speed=1000,
                                  source="fixed.jsonl"))
    try:
        assert snap_compare(app, terminal_size=(150, 42), run_before=run_before)
    finally:
        monkeypatch.undo()
        time.tzset()
