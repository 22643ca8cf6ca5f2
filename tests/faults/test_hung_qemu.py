"""Fault: a hung QEMU (SIGSTOP) in booting, ready and stopping, with real guests (TCG).

Under a running `boxui daemon`, and with a daemon started fresh after the SIGSTOP (its
crash recovery cannot adopt a QEMU whose QMP is silent): each time `boxui stop` returns
within the machine's `[stop]` deadlines and the QEMU is gone. One guest, booted again
by each case that needs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import BOXUI, cli_env
from tests.faults.conftest import FaultRecorder
from tests.faults.support import (
    HAS_QEMU,
    boxui,
    hypervisors,
    info,
    kill_hard,
    remove_home,
    short_home,
    start_daemon,
    stop_daemon,
    wait_until,
)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not HAS_QEMU, reason="qemu-system-x86_64 is not installed"),
]

NAME = "h1"
FAST_STOP = """
[stop]
acpi_timeout = 1.0
quit_timeout = 0.5
sigterm_timeout = 0.5
sigkill_timeout = 5.0
"""
#: the steps (7 s), plus a CLI run on a loaded 2-core host; below the 30 s default ACPI
#: timeout alone, so the machine's own deadlines must have been used
DEADLINE = 25.0


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    home = short_home("hung")
    try:
        out = boxui(home, "create", NAME, "--memory", "128", "--no-start")
        assert out.returncode == 0, out.stderr
        with (home / "machines" / NAME / "machine.toml").open("a") as fh:
            fh.write(FAST_STOP)
        boxui(home, "daemon", "stop")
        yield home
    finally:
        remove_home(home)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def booting_pid(home: Path) -> int | None:
    machine = info(home, NAME)
    record = machine.get("record") or {}
    pid = record.get("pid")
    return pid if machine["state"] == "booting" and isinstance(pid, int) else None


def sigstop_at(home: Path, phase: str) -> tuple[int, subprocess.Popen[str] | None]:
    """Bring the guest to `phase` and SIGSTOP its QEMU; the pid, and the CLI command
    still running (the start being booted, or the stop in progress)."""
    if phase == "booting":
        starting = subprocess.Popen([*BOXUI, "start", NAME], env=cli_env(home), text=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: booting_pid(home) is not None, 60), info(home, NAME)
        pid = booting_pid(home)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        return pid, starting
    out = boxui(home, "start", NAME, timeout=300)
    assert out.returncode == 0, out.stderr
    pid = int(info(home, NAME)["record"]["pid"])
    if phase == "ready":
        os.kill(pid, signal.SIGSTOP)
        return pid, None
    stopping = subprocess.Popen([*BOXUI, "stop", NAME], env=cli_env(home), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_until(lambda: info(home, NAME)["state"] == "stopping", 30, 0.01)
    os.kill(pid, signal.SIGSTOP)  # its guest was powering off: now it hangs
    return pid, stopping


@pytest.mark.parametrize("fresh", [False, True], ids=["under-daemon", "fresh-daemon"])
@pytest.mark.parametrize("phase", ["booting", "ready", "stopping"])
@pytest.mark.fault("12. hung QEMU: stop escalates (real guests)")
def test_stop_of_a_sigstopped_qemu_returns_in_time_and_leaves_no_process(
        home: Path, phase: str, fresh: bool, fault: FaultRecorder) -> None:
    daemon, _ = start_daemon(home)
    pending: subprocess.Popen[str] | None = None
    try:
        pid, pending = sigstop_at(home, phase)
        started = time.monotonic()
        if fresh:
            kill_hard(daemon)
            daemon, _ = start_daemon(home, timeout=60)
            started = time.monotonic()
        if phase == "stopping" and not fresh:
            assert pending is not None
            _, err = pending.communicate(timeout=DEADLINE + 30)
            assert pending.returncode == 0, err
        else:
            out = boxui(home, "stop", NAME, timeout=DEADLINE + 30)
            assert out.returncode == 0, out.stderr
        took = time.monotonic() - started
        assert took < DEADLINE, took
        assert gone(pid)
        assert hypervisors(home)[NAME] == 0
        assert info(home, NAME)["state"] in ("stopped", "crashed")
        fault.cycle()
    finally:
        if pending is not None and pending.poll() is None:
            pending.kill()
        if pending is not None:
            pending.wait(30)
        if daemon.poll() is None:
            stop_daemon(daemon)
