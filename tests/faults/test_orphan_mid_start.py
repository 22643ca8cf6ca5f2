"""Found by the real-guest soak (item 4): a supervisor SIGKILLed while QEMU was still
daemonizing. The launcher and the daemon share one command line for a moment; recovery
adopted the launcher, which then exited, and the real VM kept running unseen, its machine
marked failed. Recovery must pick the process that the `-pidfile` names."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.drivers.qemu.driver import identity_args
from backend.supervision.crash_recovery import _find_orphan
from tests.faults.conftest import FaultRecorder

SLEEPER = "import time; time.sleep(60)"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def qemu_like(run_dir: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    argv = [sys.executable, "-c", SLEEPER, "-pidfile", str(run_dir / "qemu.pid"),
            *identity_args("vm", run_dir)]
    proc = subprocess.Popen(argv)
    procs.append(proc)
    return proc.pid


def wait_exec(pid: int) -> None:
    import time

    import psutil

    for _ in range(200):
        if "-pidfile" in psutil.Process(pid).cmdline():
            return
        time.sleep(0.01)


@pytest.mark.fault("4. supervisor killed while QEMU daemonizes")
async def test_recovery_adopts_the_daemon_not_the_launcher(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], fault: FaultRecorder
) -> None:
    launcher = qemu_like(tmp_path, procs)
    daemon = qemu_like(tmp_path, procs)
    for pid in (launcher, daemon):
        wait_exec(pid)
    # the daemon has not written its pidfile yet: recovery waits for it
    finding = asyncio.create_task(asyncio.to_thread(_find_orphan, "vm", tmp_path))
    await asyncio.sleep(0.3)
    assert not finding.done()
    (tmp_path / "qemu.pid").write_text(f"{daemon}\n")
    found = await asyncio.wait_for(finding, 5)
    assert found is not None and found[0] == daemon
    fault.cycle()


async def test_a_process_without_pidfile_is_found_directly(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *identity_args("vm", tmp_path)])
    procs.append(proc)
    import time

    import psutil

    for _ in range(200):
        if identity_args("vm", tmp_path)[0] in psutil.Process(proc.pid).cmdline():
            break
        time.sleep(0.01)
    found = _find_orphan("vm", tmp_path)
    assert found is not None and found[0] == proc.pid
    assert _find_orphan("other", tmp_path) is None
