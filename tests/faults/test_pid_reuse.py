"""Item 3: a pid file and state record that point at an unrelated live process (as when
the pid was reused). The real QEMU driver must neither adopt it nor signal it, and the
machine is crashed with "pid reused". (tests/test_supervisor.py checks the same with the
test double; this runs the product driver.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from backend.drivers.qemu.driver import PIDFILE, QemuDriver
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState, Verb
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, fixed_accel
from tests.faults.conftest import FaultRecorder
from tests.faults.support import events_of
from tests.line_reader import LineReader

#: a bystander that reports every signal it can catch (SIGKILL/SIGSTOP it cannot:
#: those are checked by it still being alive and not stopped)
BYSTANDER = """
import signal, sys, time
def seen(sig, frame):
    print(f"signal {sig}", flush=True)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2, signal.SIGCONT, signal.SIGPIPE, signal.SIGALRM):
    signal.signal(sig, seen)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@dataclass
class Bystander:
    proc: subprocess.Popen[str]
    said: LineReader  # what it printed


@pytest.fixture
def bystander() -> Iterator[Bystander]:
    proc = subprocess.Popen([sys.executable, "-c", BYSTANDER], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    said = LineReader(proc.stdout)
    try:
        assert said.next(timeout=30).strip() == "ready"
        yield Bystander(proc, said)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.fault("3. pid reused by an unrelated process")
@pytest.mark.parametrize("start_time", ["recorded", "the bystander's"])
async def test_reused_pid_is_not_adopted_nor_signalled(
    home: Path, bystander: Bystander, fault: FaultRecorder, start_time: str
) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    await engine.create_machine(spec("other"))
    await engine.transition("vm", Verb.BOOTING)
    await engine.transition("vm", Verb.READY)
    own_start = psutil.Process(bystander.proc.pid).create_time()

    def pretend_running(record: RuntimeRecord) -> None:
        record.pid = bystander.proc.pid
        # the QEMU it stood for started earlier; or the pid's own start time, so that
        # only the command line check can tell them apart
        record.process_start_time = own_start - 3600 if start_time == "recorded" \
            else own_start
        record.ssh_port, record.boot_id, record.accel = 2222, "abc123", "tcg"

    await engine.update_record("vm", pretend_running)
    run_dir = engine.dirs.ensure_run_dir("vm")
    (run_dir / PIDFILE).write_text(f"{bystander.proc.pid}\n")
    await engine.close()

    engine = await Engine.open(home)
    try:
        sup = Supervisor(engine, QemuDriver(), FakeBootFiles(), accel_for=fixed_accel)
        async with sup.running(recover=recover_machines):
            assert "vm" not in sup.handles
            assert engine.projection.state_of("vm") is InstanceState.CRASHED
            reason = engine.machine("vm").reason or ""
            assert reason.startswith(f"pid reused by another program (pid {bystander.proc.pid}")
            crashed = [e for e in events_of(engine.dirs, "vm") if e[0] == "crashed"]
            assert len(crashed) == 1 and crashed[0][2] == reason
            assert engine.projection.state_of("other") is InstanceState.STOPPED
            assert engine.store.load_record("vm").pid is None
    finally:
        await engine.close()
    time.sleep(0.2)  # a signal, had one been sent, would have been printed by now
    proc = psutil.Process(bystander.proc.pid)
    assert proc.is_running() and proc.status() not in (psutil.STATUS_STOPPED,
                                                        psutil.STATUS_ZOMBIE)
    bystander.proc.send_signal(signal.SIGUSR1)  # the bystander does report signals
    assert bystander.said.next(timeout=10).strip() == f"signal {int(signal.SIGUSR1)}"
    fault.cycle()
