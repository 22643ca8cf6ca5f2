"""The CLI starts a background daemon when a change needs one: once, told when it is
ready, one daemon for many CLIs at once; read-only commands never start one; the
daemon leaves when idle; every failure on the way is one line."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import SupervisorLock
from tests.conftest import BOXUI, background_daemons, cli_env
from tests.daemon_helpers import Daemon, boxui, kill_stand_ins
from tests.fake_daemon import BOOT_DELAY_ENV

STARTED = re.compile(r"started boxui daemon, pid (\d+)\n")


def test_a_change_starts_the_daemon_once_and_reads_do_not(home: Path) -> None:
    for argv in (["ls"], ["ls", "--json"], ["events"], ["service", "ls"],
                 ["daemon", "status"], ["daemon", "stop"]):
        out = boxui(home, *argv)
        assert "started boxui daemon" not in out.stderr, (argv, out.stderr)
    assert boxui(home, "info", "vm").stderr.strip() == "boxui: no machine named 'vm'"
    assert background_daemons(home) == [] and not open_state_dir(home).api_socket.exists()
    created = boxui(home, "create", "vm", "--no-start")
    assert created.returncode == 0 and created.stdout == "vm: stopped\n"
    started = STARTED.fullmatch(created.stderr)
    assert started, created.stderr
    pid = int(started[1])
    assert [p.pid for p in background_daemons(home)] == [pid]
    cmdline = psutil.Process(pid).cmdline()
    assert cmdline[-6:-2] == ["daemon", "--background", "--home", str(home)]
    for argv in (["stop", "vm"], ["info", "vm"], ["logs", "vm"], ["ssh-config", "vm"]):
        assert "started boxui daemon" not in boxui(home, *argv).stderr, argv
    status = json.loads(boxui(home, "daemon", "status", "--json").stdout)
    assert status["running"] and status["pid"] == pid and status["by_state"] == {"stopped": 1}
    text = boxui(home, "daemon", "status").stdout
    assert f"pid:            {pid}\n" in text and "machines:       1 (1 stopped)" in text
    assert "supervisor:     pid " + str(pid) in boxui(home, "info", "vm").stdout
    log = (home / "logs" / "daemon.log").read_text()
    assert "vm None -> creating" in log and "supervising" in log


def test_ten_clis_at_once_start_exactly_one_daemon(home: Path) -> None:
    env = cli_env(home)
    procs = [subprocess.Popen([*BOXUI, "create", f"m{i}", "--no-start"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(10)]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0] * 10, outs
    started = [m for _, err in outs if (m := STARTED.fullmatch(err))]
    assert len(started) == 1, [err for _, err in outs]
    assert all(err == "" for _, err in outs if not STARTED.fullmatch(err))
    assert [p.pid for p in background_daemons(home)] == [int(started[0][1])]
    listed = json.loads(boxui(home, "ls", "--json").stdout)
    assert sorted(m["name"] for m in listed) == [f"m{i}" for i in range(10)]


def _run_daemon(home: Path, idle: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*BOXUI, "daemon", "--background", "--home", str(home),
                             "--idle-timeout", idle], env=cli_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not open_state_dir(home).api_socket.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "daemon did not serve"
        time.sleep(0.05)
    return proc


def test_the_daemon_stays_while_a_service_exists_then_leaves_when_idle(home: Path) -> None:
    proc = _run_daemon(home, "0")
    out = boxui(home, "service", "create", "web", "--replicas", "0")
    assert out.returncode == 0 and "started boxui daemon" not in out.stderr, out.stderr
    assert boxui(home, "daemon", "stop").returncode == 0
    assert proc.wait(30) == 0
    proc = _run_daemon(home, "0.5")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(2)  # a service exists: it stays
        assert boxui(home, "service", "rm", "web").returncode == 0
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = (home / "logs" / "daemon.log").read_text()
    assert "idle for 0.5 s with no machine running, no service and no client" in log
    assert not open_state_dir(home).api_socket.exists()
    # the next change starts a new one
    assert STARTED.fullmatch(boxui(home, "create", "vm", "--no-start").stderr)


def test_an_open_event_stream_keeps_the_daemon(home: Path) -> None:
    proc = _run_daemon(home, "2")
    follower = subprocess.Popen(
        ["curl", "-sN", "--unix-socket", str(open_state_dir(home).api_socket),
         "http://boxui/v1/events"], stdout=subprocess.DEVNULL)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(4)
        follower.kill()
        assert proc.wait(30) == 0
    finally:
        follower.kill()
        follower.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_daemon_that_cannot_start_is_one_line(home: Path) -> None:
    boxui(home, "ls")
    log = open_state_dir(home).event_log
    log.unlink(missing_ok=True)
    log.mkdir()  # the daemon cannot read its event log; the CLI does not need to
    out = boxui(home, "create", "vm", "--no-start")
    assert out.returncode == 1 and out.stdout == ""
    assert re.fullmatch(r"boxui: the boxui daemon \(pid \d+\) exited \(exit code 1\): "
                        r"boxui: cannot read event log .*: Is a directory "
                        r"\(log: .*daemon\.log\)\n", out.stderr), out.stderr
    assert not (home / "machines" / "vm").exists()


def test_a_lock_held_without_an_api_is_one_line(home: Path) -> None:
    lock = SupervisorLock(open_state_dir(home).lock_file)
    lock.acquire()
    try:
        out = boxui(home, "start", "vm")
    finally:
        lock.release()
    assert out.returncode == 1
    assert out.stderr == f"boxui: state dir is in use by boxui pid {psutil.Process().pid}\n"
    assert background_daemons(home) == []


def test_a_daemon_killed_mid_request_is_one_line(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_DELAY_ENV, "600")  # the boot never ends under this daemon
    daemon = Daemon(home)
    result: list[subprocess.CompletedProcess[str]] = []
    try:
        cli = threading.Thread(target=lambda: result.append(boxui(home, "create", "vm")))
        cli.start()
        deadline = time.monotonic() + 30
        while "vm stopped -> booting" not in "".join(daemon.lines):
            assert time.monotonic() < deadline, "the boot did not begin"
            time.sleep(0.02)
        daemon.kill()
        cli.join(30)
        assert not cli.is_alive()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        kill_stand_ins(home)
    out = result[0]
    assert out.returncode == 1 and out.stdout == ""
    assert re.fullmatch(rf"boxui: the boxui daemon \(pid {daemon.pid}\) went away before "
                        r"answering \(.*\); the request may or may not have been carried "
                        r"out: check with `boxui ls`\n", out.stderr), out.stderr
