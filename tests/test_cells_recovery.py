"""No cell leaks a machine: the daemon is SIGKILLed at each step of a cell, the next
daemon finishes the cell, and afterwards no machine and no guest process is left.

The real `boxui daemon` runs over stand-in guests (`tests.fake_daemon`), whose commands
run on the host: a guest path is a host path, so a FIFO holds a copy step open exactly
as long as the test wants, and a mark file says when the command has started. The real
`boxui run` follows the cell and must end in one line, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import BOXUI, cli_env
from tests.daemon_helpers import Daemon, boxui, kill_stand_ins, machines
from tests.fake_daemon import BOOT_DELAY_ENV


@pytest.fixture(autouse=True)
def _nothing_left(home: Path, tmp_path: Path) -> Iterator[None]:
    yield
    kill_stand_ins(home)
    kill_stand_ins(tmp_path)  # commands "in the guest" that name the test's files


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def events(home: Path) -> list[dict[str, Any]]:
    out = boxui(home, "events", "--json", "-n", "1000")
    return [json.loads(line) for line in out.stdout.splitlines()]


def logged(home: Path, kind: str) -> bool:
    return any(e["type"].endswith("." + kind) for e in events(home))


def cells(home: Path) -> list[dict[str, Any]]:
    return list(json.loads(boxui(home, "cells", "--json").stdout))


def guest_processes(home: Path) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(home) in arg for arg in p.info["cmdline"] or [])
            and p.pid != os.getpid()]


def start_run(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*BOXUI, "run", "--name", "c1", *args], env=cli_env(home),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def held_command(mark: Path) -> list[str]:
    """A command that says it started (the mark) and then runs for a minute."""
    return [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'w'); time.sleep(60)",
            str(mark)]


def step_setups(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Per step: `boxui run` arguments that hold the cell in that step, and the event
    type after which the daemon is killed."""
    fifo = tmp / "guest" / "fifo"
    src = tmp / "in.txt"
    mark = tmp / "mark"
    return {
        "identity": (["--", "true"], "creating"),
        "inputs": ([f"--input={src}:{fifo}", "--", "true"], "materialized"),
        "command": (["--", *held_command(mark)], "busy"),
        "export": ([f"--export={fifo}:{tmp}", "--", "true"], "command_completed"),
        "destroy": (["--", "true"], "stopping"),
    }


@pytest.mark.parametrize("step", ["identity", "inputs", "command", "export", "destroy"])
def test_daemon_killed_at_each_step_leaks_no_machine(
        step: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "guest").mkdir()
    os.mkfifo(tmp_path / "guest" / "fifo")
    (tmp_path / "in.txt").write_text("input\n")
    args, kill_after = step_setups(tmp_path)[step]
    if step == "identity":
        monkeypatch.setenv(BOOT_DELAY_ENV, "3")  # this daemon dies before the guest is up
    daemon = Daemon(home)
    try:
        run = start_run(home, *args)
        wait_until(f"{kill_after} in the log", lambda: logged(home, kill_after))
        if step == "command":
            wait_until("the command to start", (tmp_path / "mark").exists)
        daemon.kill()
        _, err = run.communicate(timeout=30)
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    assert run.returncode in (0, 1) and "Traceback" not in err, err
    monkeypatch.delenv(BOOT_DELAY_ENV, raising=False)
    with_recovery = Daemon(home)
    try:
        assert machines(home) == {}
        [cell] = cells(home)
        assert cell["stage"] == "destroyed"
        during = {"identity": "identity", "inputs": "copying its inputs",
                  "command": "its command", "export": "export", "destroy": "destroy"}[step]
        if cell["outcome"] == "interrupted":  # "destroy" may have finished before the kill
            assert cell["reason"].startswith("interrupted: the supervisor died during "
                                             + during), cell["reason"]
        else:
            assert step == "destroy"
    finally:
        with_recovery.terminate()
    wait_until("no guest process", lambda: guest_processes(home) == [], timeout=10)


def test_ctrl_c_destroys_the_cell_and_loses_no_event(home: Path, tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    daemon = Daemon(home)
    try:
        run = start_run(home, "--", *held_command(mark))
        wait_until("the command to start", mark.exists)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert err.strip() == "boxui: cell c1 cancelled; its machine was destroyed"
        [cell] = cells(home)
        assert (cell["outcome"], cell["stage"]) == ("cancelled", "destroyed")
        kinds = [e["type"].rsplit(".", 1)[-1] for e in events(home)
                 if e["type"].startswith("dev.boxui.cell.v1.")]
        assert kinds == ["started", "materialized", "command_failed", "destroyed"]
        assert machines(home) == {}
    finally:
        daemon.terminate()
    wait_until("no guest process", lambda: guest_processes(home) == [], timeout=10)


def test_the_exit_code_is_the_commands(home: Path, tmp_path: Path) -> None:
    daemon = Daemon(home)
    try:
        out = boxui(home, "run", "--", "sh", "-c", "echo hi; echo oops >&2; exit 7")
        assert (out.returncode, out.stdout, out.stderr) == (7, "hi\n", "oops\n")
        out = boxui(home, "run", "--timeout", "0.5", "--", "sleep", "5")
        assert out.returncode == 124 and "timed out after 0.5 s" in out.stderr
        assert machines(home) == {}
        assert [c["outcome"] for c in cells(home)] == ["failed", "timed_out"]
    finally:
        daemon.terminate()
