from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.machine_store import MachineStore
from backend.state.runtime_record import RuntimeRecord, write_record
from backend.state.state_dir import open_state_dir
from tests.conftest import BOXUI, cli_env, spec
from tests.line_reader import LineReader


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=30)


async def make_machines(home: Path) -> None:
    engine = await Engine.open(home)
    try:
        await engine.create_machine(spec("alpha", vcpus=2, memory_mib=512))
        await engine.create_machine(spec("beta"))
        await engine.transition("beta", Verb.BOOTING)
        await engine.transition("beta", Verb.READY, message="ssh answered")
    finally:
        await engine.close()


async def test_ls_and_info(home: Path) -> None:
    await make_machines(home)
    out = run(home, "ls")
    assert out.returncode == 0, out.stderr
    assert "alpha" in out.stdout and "512 MiB" in out.stdout
    # beta was running when its (test) supervisor went away: not trusted as running
    assert "stopped*" in out.stdout
    data = json.loads(run(home, "ls", "--json").stdout)
    by_name = {m["name"]: m for m in data}
    assert by_name["alpha"]["state"] == "stopped"
    assert by_name["beta"]["needs_recovery"] is True
    assert by_name["beta"]["record"]["persisted"] == "running"
    info = run(home, "info", "alpha")
    assert "vcpus:" in info.stdout and "supervisor:     not running" in info.stdout
    info_json = json.loads(run(home, "info", "beta", "--json").stdout)
    assert info_json["state"] == "stopped" and info_json["supervisor_pid"] is None


async def test_ls_shows_recorded_state_while_supervised(home: Path) -> None:
    await make_machines(home)
    engine = await Engine.open(home)
    try:
        data = json.loads(run(home, "ls", "--json").stdout)
        assert {m["name"]: m["state"] for m in data}["beta"] == "ready"
    finally:
        await engine.close()


async def test_events_text_json_and_filter(home: Path) -> None:
    await make_machines(home)
    text = run(home, "events").stdout.splitlines()
    assert len(text) == 6
    assert "booting -> ready" in text[-1] and "ssh answered" in text[-1]
    lines = run(home, "events", "--json", "beta").stdout.splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types == ["dev.boxui.instance.v1." + v for v in
                     ("creating", "created", "booting", "ready")]
    assert len(run(home, "events", "-n", "2").stdout.splitlines()) == 2


def has_inotify_watch(pid: int) -> bool:
    """Whether process `pid` watches a file through inotify (as `--follow` does)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify" and \
                    "inotify wd:" in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text():
                return True
        except OSError:  # closed while looked at
            continue
    return False


def wait_until_watching(pid: int, timeout: float = 10) -> None:
    """A follower sees an append only once its watch is set: an event written before
    that waits for the next change of the log, which this test would never make."""
    deadline = time.monotonic() + timeout
    while not has_inotify_watch(pid):
        assert time.monotonic() < deadline, f"pid {pid} set no inotify watch in {timeout} s"
        time.sleep(0.02)


async def test_events_follow_prints_new_events(home: Path) -> None:
    await make_machines(home)
    proc = subprocess.Popen([*BOXUI, "events", "--follow", "--json", "alpha"],
                            stdout=subprocess.PIPE, text=True, env=cli_env(home))
    try:
        assert proc.stdout is not None
        lines = LineReader(proc.stdout)
        first = [json.loads(lines.next(timeout=30))["type"] for _ in range(2)]
        assert first[-1].endswith(".created")
        wait_until_watching(proc.pid)
        engine = await Engine.open(home)
        try:
            await engine.transition("beta", Verb.STOPPING)  # filtered out
            await engine.transition("alpha", Verb.BOOTING, message="go")
        finally:
            await engine.close()
        event = json.loads(lines.next(timeout=10))
        assert event["subject"] == "alpha" and event["type"].endswith(".booting")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("bad", ["../x", "a/b", "-rf", "", "x" * 300, "héllo"])
def test_bad_names_are_one_line_usage_errors(home: Path, tmp_path: Path, bad: str) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (["info", bad], ["events", bad]):
        if bad.startswith("-"):
            args = [args[0], "--", bad]
        out = run(home, *args)
        assert out.returncode == 2, out
        assert out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1
        assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_machine_and_bad_state_dir(home: Path, tmp_path: Path) -> None:
    out = run(home, "info", "nope")
    assert out.returncode == 1 and out.stderr.strip() == "boxui: no machine named 'nope'"
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir(mode=0o777)
    unsafe.chmod(0o777)
    out = run(unsafe, "ls")
    assert out.returncode == 1
    assert "group- or world-writable" in out.stderr and len(out.stderr.splitlines()) == 1


def test_broken_machine_is_listed(home: Path) -> None:
    dirs = open_state_dir(home)
    MachineStore(dirs).create(spec("ok"))
    MachineStore(dirs).create(spec("bad"))
    dirs.spec_path("bad").write_text("vcpus = [\n")
    write_record(dirs.record_path("ok"), RuntimeRecord(state=InstanceState.STOPPED,
                                                       persisted=PersistedState.STOPPED))
    data = {m["name"]: m for m in json.loads(run(home, "ls", "--json").stdout)}
    assert data["bad"]["state"] == "broken" and "invalid TOML" in data["bad"]["reason"]
    assert data["ok"]["state"] == "stopped"


@pytest.mark.parametrize(("args", "expected"), [
    (["--liveness-port", "80"], "liveness.port 80 is not a published port"),
    (["--liveness-exec", "true", "--liveness-port", "22"], "do not go together"),
    (["--liveness-port", "0"], "--liveness-port"),
])
def test_bad_liveness_options_are_usage_errors_before_any_daemon(
        home: Path, args: list[str], expected: str) -> None:
    out = run(home, "create", "web", *args)
    assert out.returncode == 2, out
    assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (home / "machines" / "web").exists() and not (home / "run").exists()
