"""`boxui create --autostart` and the real daemon (over stand-ins) starting such machines
when it starts: after a clean stop of the daemon, and after a crash of the host."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import boxui, daemon_running, kill_stand_ins, machines, recorded_pid


@pytest.fixture
def home(home: Path) -> Iterator[Path]:
    yield home
    kill_stand_ins(home)


def wait_ready(home: Path, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while machines(home)[name]["state"] != "ready":
        assert time.monotonic() < deadline, machines(home)[name]
        time.sleep(0.1)


def test_the_daemon_starts_autostart_machines_when_it_starts(home: Path) -> None:
    with daemon_running(home):
        made = boxui(home, "create", "auto", "--autostart", "--no-start")
        assert made.returncode == 0, made.stderr
        assert boxui(home, "create", "plain", "--no-start").returncode == 0
    spec = tomllib.loads((home / "machines" / "auto" / "machine.toml").read_text())
    assert spec["autostart"] is True
    assert machines(home)["auto"]["spec"]["autostart"] is True  # type: ignore[index]
    assert machines(home)["auto"]["state"] == "stopped"

    with daemon_running(home) as daemon:
        wait_ready(home, "auto")
        assert machines(home)["plain"]["state"] == "stopped"
        first = recorded_pid(home, "auto")
        # the host goes down: the daemon and the VM with it
        daemon.kill()
        kill_stand_ins(home)
    assert "auto autostart starting at daemon start-up" in "".join(daemon.lines)

    with daemon_running(home) as daemon:
        wait_ready(home, "auto")
        assert recorded_pid(home, "auto") != first
        log = "".join(daemon.lines)
        assert "auto ready -> crashed" in log and "was crashed" in log, log
        assert boxui(home, "stop", "auto").returncode == 0
    events = boxui(home, "events", "auto").stdout
    assert events.count("autostart") >= 2, events
