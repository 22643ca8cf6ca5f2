"""`boxui demo --script --real`: a scripted lifecycle on a real QEMU guest under TCG,
recorded; the crash is a real SIGKILL of QEMU, and the replay ends where it ended."""

from __future__ import annotations

import json
from pathlib import Path

from backend.state.event_log import read_log
from backend.state.state_dir import StateDir
from boxui.tui.demo_modes import build_script_app
from boxui.tui.demo_script import ScriptDirector, load_script
from boxui.tui.recording import load_recording
from tests.app.test_demo_record_replay import wait_for
from tests.vm_helpers import VM_MARKS, qemu_pids

pytestmark = VM_MARKS

def step(do: str, **fields: object) -> str:
    """One `[[steps]]` table of the script, acting on vm-a."""
    lines = ["[[steps]]", f"do = {json.dumps(do)}", 'names = ["vm-a"]']
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


SCRIPT = 'title = "one real machine"\n' + "".join([
    step("create"), step("wait", until="ready", timeout=900),
    step("crash"), step("wait", until="crashed", timeout=60),
    step("recover"), step("wait", until="ready", timeout=900)])


async def test_a_script_on_a_real_machine(vm_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "real.toml"
    path.write_text(SCRIPT)
    recording = tmp_path / "real.jsonl"
    app = build_script_app(vm_home, load_script(path), real=True, record=recording)
    director = app.director
    assert isinstance(director, ScriptDirector)
    async with app.run_test(size=(150, 42)) as pilot:
        await wait_for(pilot, lambda: director.steps_done >= 6, 2000, "the script")
        assert director.skipped == []
        assert app.demo_backend.machine("vm-a").state.value == "ready"
        assert qemu_pids(vm_home), "a real QEMU runs it"
        await pilot.press("q")  # stops them, then quits
        await wait_for(pilot, lambda: not qemu_pids(vm_home), 300,
                       "closing the real demo to stop its machines")
    kinds = [e.type.rsplit(".", 1)[-1] for e in read_log(StateDir(vm_home).event_log).events
             if e.subject == "vm-a"]
    assert kinds[:7] == ["creating", "created", "booting", "ready", "crashed", "booting",
                         "ready"]
    played = load_recording(recording)
    recorded = [line.event.type.rsplit(".", 1)[-1] for line in played.lines
                if line.event.subject == "vm-a"]
    assert recorded == kinds
    assert played.lines[0].spec is not None
