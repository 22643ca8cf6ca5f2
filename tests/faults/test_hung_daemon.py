"""Fault: a hung hypervisor under a real `boxui daemon` (stand-in guests), through the CLI.

SIGSTOP the machine's process under a running daemon, and before a fresh daemon starts;
each time `boxui stop` returns within the machine's `[stop]` deadlines and the process is
gone. A daemon that starts with an orphaned hypervisor reports it, `boxui doctor` shows
it, and `boxui gc` lists then kills it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backend.drivers.qemu.driver import identity_args
from backend.state.event_log import read_log
from backend.state.state_dir import open_state_dir
from backend.supervision.host_checks import check_orphans
from backend.supervision.orphans import ORPHAN_FOUND_TYPE, ORPHAN_KILLED_TYPE
from tests.daemon_helpers import boxui, daemon_running, kill_stand_ins, recorded_pid
from tests.faults.conftest import FaultRecorder

FAST_STOP = """
[stop]
acpi_timeout = 0.5
quit_timeout = 0.3
sigterm_timeout = 0.3
sigkill_timeout = 3.0
"""
#: the steps, plus a CLI run (seconds on a loaded 2-core host); below the 30 s
#: default ACPI timeout alone, so the machine's own deadlines must have been used
DEADLINE = 0.5 + 0.3 + 0.3 + 3.0 + 20.0


@pytest.fixture
def home(home: Path) -> Iterator[Path]:
    yield home
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(home) in arg for arg in proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
    kill_stand_ins(home)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def create_with_fast_stop(home: Path, name: str) -> int:
    assert boxui(home, "create", name).returncode == 0
    with open_state_dir(home).spec_path(name).open("a") as fh:
        fh.write(FAST_STOP)
    return recorded_pid(home, name)


def timed_stop(home: Path, name: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = boxui(home, "stop", name, timeout=DEADLINE + 30)
    return out, time.monotonic() - started


@pytest.mark.fault("12. hung hypervisor: stop escalates (test double)")
def test_stop_under_a_daemon_and_a_fresh_daemon_kills_a_sigstopped_guest(
        home: Path, fault: FaultRecorder) -> None:
    with daemon_running(home):
        pid = create_with_fast_stop(home, "vm")
        os.kill(pid, signal.SIGSTOP)
        out, took = timed_stop(home, "vm")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == \
            "vm: stopped: killed (SIGKILL) after SIGTERM timeout (0.3 s)"
        assert took < DEADLINE and gone(pid), took
        fault.cycle()
        assert boxui(home, "start", "vm").returncode == 0
        pid = recorded_pid(home, "vm")
        os.kill(pid, signal.SIGSTOP)
    # the daemon went away (SIGTERM: machines keep running); a fresh one finds it hung
    with daemon_running(home):
        out, took = timed_stop(home, "vm")
        assert out.returncode == 0, out.stderr
        assert took < DEADLINE and gone(pid), (took, out.stdout)
        fault.cycle()


@pytest.mark.fault("14. nothing orphaned: rm, daemon start, gc (test double)")
def test_a_daemon_reports_an_orphan_doctor_shows_it_and_gc_kills_it(
        home: Path, fault: FaultRecorder) -> None:
    dirs = open_state_dir(home)
    args = identity_args("ghost", dirs.machine_run_dir("ghost"))
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *args])
    try:
        deadline = time.monotonic() + 10
        while "-c" not in psutil.Process(orphan.pid).cmdline():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(orphan.pid, signal.SIGSTOP)  # hung, too: only SIGKILL ends it
        doctor = check_orphans(home)
        assert doctor.status == "warn" and f"pid {orphan.pid}" in doctor.detail, doctor
        with daemon_running(home) as daemon:
            reported = f"orphaned QEMU pid {orphan.pid} (no machine ghost in this state dir)"
            assert reported in "".join(daemon.lines)
            dry = boxui(home, "gc", "--dry-run")
            assert dry.returncode == 0 and f"pid {orphan.pid} of ghost: would kill" \
                in dry.stdout, dry.stdout
            assert orphan.poll() is None
            done = boxui(home, "gc")
            assert done.returncode == 0, done.stderr
            assert f"pid {orphan.pid} of ghost: killed (SIGKILL)" in done.stdout, done.stdout
            assert orphan.wait(5) == -signal.SIGKILL
            again = boxui(home, "gc", "--json")
            assert json.loads(again.stdout) == []
            fault.cycle()
        types = [e.type for e in read_log(dirs.event_log).events if e.subject == "ghost"]
        assert types == [ORPHAN_FOUND_TYPE, ORPHAN_KILLED_TYPE]
        assert check_orphans(home).status == "ok"
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait(10)
