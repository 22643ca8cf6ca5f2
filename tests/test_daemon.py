"""`boxui daemon` serving the API, and the CLI going through it while it runs."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backend.state.state_dir import open_state_dir
from tests.daemon_helpers import boxui, daemon_running, kill_stand_ins, machines, recorded_pid


@pytest.fixture
def home(home: Path) -> Iterator[Path]:
    yield home
    kill_stand_ins(home)


def test_cli_mutations_go_through_a_running_daemon(home: Path) -> None:
    with daemon_running(home) as daemon:
        sock = open_state_dir(home).api_socket
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        created = boxui(home, "create", "vm", "--vcpus", "2", "--json")
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["state"] == "ready"
        hello = boxui(home, "exec", "vm", "--", "sh", "-c", "echo hello; echo oops >&2; exit 3")
        assert (hello.returncode, hello.stdout, hello.stderr) == (3, "hello\n", "oops\n")
        assert boxui(home, "stop", "vm").stdout.strip() == "vm: stopped: powered off (ACPI)"
        assert boxui(home, "start", "vm", "--json").returncode == 0
        restarted = boxui(home, "restart", "vm", "--json")
        assert json.loads(restarted.stdout)["state"] == "ready"
        busy = boxui(home, "rm", "vm")
        assert busy.returncode == 1
        assert busy.stderr.strip() == "boxui: vm is ready; stop it first or use --force"
        missing = boxui(home, "start", "ghost")
        assert missing.stderr.strip() == "boxui: no machine named 'ghost'"
        assert boxui(home, "create", "keep", "--no-start").returncode == 0
        assert boxui(home, "rm", "--force", "vm").stdout.strip() == "deleted vm"
        assert list(machines(home)) == ["keep"]
        log = "".join(daemon.lines)
    # every change was made by the daemon: it logged each transition
    for line in ("vm None -> creating", "vm stopped -> booting", "vm ready -> busy",
                 "vm busy -> ready", "vm stopped -> None", "keep creating -> stopped"):
        assert line in log, log


def test_sigterm_leaves_machines_running_and_the_next_daemon_adopts(home: Path) -> None:
    with daemon_running(home) as daemon:
        assert boxui(home, "create", "vm").returncode == 0
        pid = recorded_pid(home, "vm")
        assert daemon.terminate() == 0
    assert "shutting down; machines keep running" in "".join(daemon.lines)
    assert not open_state_dir(home).api_socket.exists()
    assert psutil.pid_exists(pid)
    with daemon_running(home) as daemon:
        assert "re-adopted running pid" in "".join(daemon.lines)
        assert machines(home)["vm"]["state"] == "ready" and recorded_pid(home, "vm") == pid
        assert boxui(home, "stop", "vm").returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_a_killed_daemon_leaves_a_socket_that_the_next_one_replaces(home: Path) -> None:
    with daemon_running(home) as daemon:
        daemon.kill()
    assert open_state_dir(home).api_socket.exists()  # stale, and nobody holds the lock
    # the next change finds no daemon behind it and starts one (with the real QEMU
    # driver: nothing boots here), saying so once
    created = boxui(home, "create", "vm", "--no-start")
    assert created.returncode == 0, created.stderr
    started = re.fullmatch(r"started boxui daemon, pid (\d+)\n", created.stderr)
    assert started, created.stderr
    stopped = boxui(home, "stop", "vm")
    assert (stopped.stdout.strip(), stopped.stderr) == ("vm: stopped", "")
    assert boxui(home, "daemon", "stop").stdout.strip() == \
        f"stopped boxui daemon, pid {started[1]}; machines keep running"
    pid = int(started[1])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    with daemon_running(home) as daemon:
        assert boxui(home, "rm", "vm").stdout.strip() == "deleted vm"
        assert "vm stopped -> None" in "".join(daemon.lines)
