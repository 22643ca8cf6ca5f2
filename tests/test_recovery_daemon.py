"""Recovery finishes what was in progress: boots cut short by a killed daemon or a killed
CLI end ready, and a `start` of a machine still booting waits for ready.

Each test runs the real `boxui daemon` over stand-in guests that take a while to boot
(`tests.fake_daemon`, `BOXUI_TEST_BOOT_DELAY`), and the real CLI against it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BOXUI, cli_env
from tests.daemon_helpers import boxui, daemon_running, kill_stand_ins, machines, recorded_pid
from tests.fake_daemon import BOOT_DELAY_ENV


@pytest.fixture(autouse=True)
def _no_stand_ins_left(home: Path) -> Iterator[None]:
    yield
    kill_stand_ins(home)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def booting_with_pid(home: Path) -> bool:
    vm = machines(home)["vm"]
    record = vm["record"]
    return vm["state"] == "booting" and isinstance(record, dict) and \
        isinstance(record.get("pid"), int)


def start_in_background(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*BOXUI, "start", "vm"], env=cli_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ready_messages(home: Path) -> list[str]:
    out = boxui(home, "events", "vm", "--json")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    return [e["data"].get("message") or "" for e in events if e["data"].get("to") == "ready"]


def test_daemon_killed_mid_boot_the_next_one_finishes_it(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_DELAY_ENV, "600")  # this daemon never sees the guest ready
    with daemon_running(home) as daemon:
        assert boxui(home, "create", "vm", "--no-start").returncode == 0
        cli = start_in_background(home)
        wait_until("vm booting", lambda: booting_with_pid(home))
        pid = recorded_pid(home, "vm")
        daemon.kill()
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 1 and "Traceback" not in err, err
    vm = machines(home)["vm"]  # the guest lives on, unsupervised
    assert vm["state"] == "booting" and vm["needs_recovery"] is True
    assert str(vm["reason"]).startswith("running without a supervisor")

    monkeypatch.setenv(BOOT_DELAY_ENV, "1.5")
    with daemon_running(home):
        # `start` of the machine the new daemon re-adopted mid-boot waits for ready
        began = time.monotonic()
        out = boxui(home, "start", "vm", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state"] == "ready"
        assert time.monotonic() - began > 0.5, "start returned before the boot could end"
        assert recorded_pid(home, "vm") == pid  # the same guest, never a second one
        assert ready_messages(home) == [f"re-adopted pid {pid}; ready"]


def test_cli_killed_while_it_waits_the_boot_goes_on(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_DELAY_ENV, "2")
    with daemon_running(home):
        assert boxui(home, "create", "vm", "--no-start").returncode == 0
        cli = start_in_background(home)
        wait_until("vm booting", lambda: booting_with_pid(home))
        pid = recorded_pid(home, "vm")
        cli.send_signal(signal.SIGKILL)
        cli.communicate(timeout=30)
        wait_until("vm ready", lambda: machines(home)["vm"]["state"] == "ready")
        assert recorded_pid(home, "vm") == pid
        assert len(ready_messages(home)) == 1
        info = boxui(home, "info", "vm").stdout
        assert "supervisor:     supervised by pid" in info and "recovery:" not in info
