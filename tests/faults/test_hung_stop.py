"""Fault: a hung hypervisor (SIGSTOPped) never wedges a stop, with the stand-in driver.

The stand-in's process is really SIGSTOPped: it answers neither its pretend power button
nor its pretend QMP, SIGTERM stays pending, and only SIGKILL ends it -- as for a hung
QEMU. Each stop must return within the machine's `[stop]` deadlines, leave no process,
and say which step ended it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from backend.drivers.qemu.driver import identity_args
from backend.drivers.standin import is_stopped
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import StopSettings
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.orphan_gc import collect_orphans, list_orphans
from backend.supervision.orphans import HypervisorProcess, kill_process
from backend.supervision.supervisor import MachineBusyError, Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.faults.conftest import FaultRecorder


def sigstop(pid: int) -> None:
    """SIGSTOP `pid`, and return once it has taken: a loaded host runs the target late,
    and until it stops it still answers (the stand-in would power off as asked)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while not is_stopped(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.005)


#: short deadlines: a whole escalation takes under 2 s
FAST = StopSettings(acpi_timeout=0.5, quit_timeout=0.3, sigterm_timeout=0.3,
                    sigkill_timeout=3.0)
DEADLINE = 0.5 + 0.3 + 0.3 + 3.0 + 6.0  # the steps, and slack for a loaded host


@pytest.fixture
async def driver() -> AsyncIterator[FakeDriver]:
    fake = FakeDriver()
    yield fake
    for pid in fake.alive():
        os.kill(pid, signal.SIGCONT)
    fake.kill_all()


def supervisor(engine: Engine, driver: FakeDriver) -> Supervisor:
    return Supervisor(engine, driver, FakeBootFiles(), accel_for=fixed_accel)


def messages(engine: Engine, name: str, verb: str) -> list[str]:
    return [e.message for e in read_log(engine.dirs.event_log).events
            if e.subject == name and e.type.endswith("." + verb)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def timed_stop(sup: Supervisor, name: str, *, force: bool = False) -> float:
    started = time.monotonic()
    async with asyncio.timeout(DEADLINE + 5):
        await sup.stop_machine(name, force=force)
    return time.monotonic() - started


@pytest.mark.fault("12. hung hypervisor: stop escalates (test double)")
async def test_stop_of_a_sigstopped_ready_machine_kills_it(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder) -> None:
    await engine.create_machine(spec("vm", stop=FAST))
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        sigstop(pid)
        took = await timed_stop(sup, "vm")
        fault.cycle()
        assert took < DEADLINE, took
        assert gone(pid)
        assert engine.projection.state_of("vm") is InstanceState.STOPPED
        assert messages(engine, "vm", "stopped") == [
            "stopped: killed (SIGKILL) after SIGTERM timeout (0.3 s)"]
        fault.lost(len(driver.alive()))


@pytest.mark.fault("12. hung hypervisor: stop escalates (test double)")
async def test_each_step_is_named_for_what_ended_the_process(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder) -> None:
    for name in ("acpi", "deaf", "killed"):
        await engine.create_machine(spec(name, stop=FAST))
    driver.script("deaf").acpi = "ignored"
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        for name in ("acpi", "deaf", "killed"):
            await sup.start_machine(name)
        await sup.stop_machine("acpi")
        await sup.stop_machine("deaf")
        # killed by hand while its power-off hangs: not credited to ACPI
        driver.script("killed").acpi = "ignored"
        pid = sup.handles["killed"].pid
        asyncio.get_running_loop().call_later(0.1, os.kill, pid, signal.SIGKILL)
        await sup.stop_machine("killed")
        fault.cycle(3)
    assert messages(engine, "acpi", "stopped") == ["stopped: powered off (ACPI)"]
    assert messages(engine, "deaf", "stopped") == [
        "stopped: quit over QMP after ACPI timeout (0.5 s)"]
    assert messages(engine, "killed", "stopped") == ["stopped: process exited (not by boxui)"]


@pytest.mark.fault("12. hung hypervisor: stop escalates (test double)")
async def test_a_hang_while_booting_or_stopping_still_ends_in_time(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder) -> None:
    await engine.create_machine(spec("boot", stop=FAST))
    await engine.create_machine(spec("halt", stop=FAST))
    driver.script("boot").boot_delay = 30
    driver.script("halt").acpi = "ignored"
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        booting = asyncio.ensure_future(sup.start_machine("boot"))
        async with asyncio.timeout(5):
            while "boot" not in sup.handles:
                await asyncio.sleep(0.02)
        boot_pid = sup.handles["boot"].pid
        sigstop(boot_pid)
        assert await timed_stop(sup, "boot") < DEADLINE
        await asyncio.gather(booting, return_exceptions=True)
        await sup.start_machine("halt")
        halt_pid = sup.handles["halt"].pid
        stopping = asyncio.ensure_future(timed_stop(sup, "halt"))
        await asyncio.sleep(0.2)  # in its ACPI wait: now it hangs
        sigstop(halt_pid)
        assert await stopping < DEADLINE
        fault.cycle(2)
    assert gone(boot_pid) and gone(halt_pid)
    assert engine.projection.state_of("boot") is InstanceState.STOPPED
    assert messages(engine, "halt", "stopped") == [
        "stopped: killed (SIGKILL) after SIGTERM timeout (0.3 s)"]
    fault.lost(len(driver.alive()))


@pytest.mark.fault("13. stop --force overtakes a hung graceful stop (test double)")
async def test_force_overtakes_a_graceful_stop_in_progress(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder) -> None:
    slow = StopSettings(acpi_timeout=60.0)
    await engine.create_machine(spec("vm", stop=slow))
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        sigstop(pid)
        graceful = asyncio.ensure_future(sup.stop_machine("vm"))
        await asyncio.sleep(0.3)
        assert not graceful.done()
        took = await timed_stop(sup, "vm", force=True)
        async with asyncio.timeout(5):
            await graceful  # ends too, without an error
        fault.cycle()
        assert took < DEADLINE, took  # far below the graceful stop's 60 s ACPI wait
        assert gone(pid)
    assert messages(engine, "vm", "stopped") == [
        "stopped: killed (SIGKILL): stop --force overtook the graceful stop"]
    assert engine.projection.state_of("vm") is InstanceState.STOPPED


@pytest.fixture
def stray(home: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts by hand: ended (and reaped) whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def fake_hypervisor(engine: Engine, name: str) -> subprocess.Popen[bytes]:
    """A process with `name`'s identity arguments for this state dir, as its QEMU has."""
    args = identity_args(name, engine.dirs.machine_run_dir(name))
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *args])


async def wait_started(proc: subprocess.Popen[bytes]) -> None:
    """Until the child runs its own command line (not still our fork)."""
    async with asyncio.timeout(10):
        while "-c" not in (psutil.Process(proc.pid).cmdline() or []):
            await asyncio.sleep(0.02)


@pytest.mark.fault("14. nothing orphaned: rm, daemon start, gc (test double)")
async def test_rm_refuses_while_a_qemu_of_the_machine_lives_and_force_kills_it(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder) -> None:
    await engine.create_machine(spec("vm", stop=FAST))
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        await sup.detach()  # boxui goes away; the VM runs on, and hangs
    sigstop(pid)

    def unprovable(record: RuntimeRecord) -> None:
        assert record.process_start_time is not None
        record.process_start_time -= 100  # recovery cannot prove it: not adopted

    await engine.update_record("vm", unprovable)
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        assert engine.projection.state_of("vm") is InstanceState.CRASHED
        with pytest.raises(MachineBusyError, match=f"pid {pid}"):
            await sup.delete_machine("vm")
        assert not gone(pid) and engine.store.exists("vm")
        await sup.delete_machine("vm", force=True)
        fault.cycle()
    assert gone(pid)
    assert not engine.store.exists("vm")
    fault.lost(len(driver.alive()))


@pytest.mark.fault("14. nothing orphaned: rm, daemon start, gc (test double)")
async def test_rm_force_of_a_running_machine_leaves_no_process(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder) -> None:
    await engine.create_machine(spec("vm", stop=FAST))
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        sigstop(pid)
        with pytest.raises(MachineBusyError):
            await sup.delete_machine("vm")
        await sup.delete_machine("vm", force=True)
        fault.cycle()
    assert gone(pid)
    fault.lost(len(driver.alive()))


@pytest.mark.fault("14. nothing orphaned: rm, daemon start, gc (test double)")
async def test_orphans_are_listed_then_killed_and_strangers_never(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder,
        stray: list[subprocess.Popen[bytes]]) -> None:
    await engine.create_machine(spec("kept"))
    await engine.create_machine(spec("idle"))
    ghost = fake_hypervisor(engine, "ghost")  # no such machine
    second = fake_hypervisor(engine, "kept")  # not its current run
    idle = fake_hypervisor(engine, "idle")  # its machine is stopped
    stranger = subprocess.Popen(["sleep", "600"])
    stray.extend([ghost, second, idle, stranger])
    for proc in (ghost, second, idle):
        await wait_started(proc)
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("kept")
        kept = sup.handles["kept"].pid
        found = {o.process.pid: o.reason for o in await list_orphans(sup)}
        assert found == {ghost.pid: "no machine ghost in this state dir",
                         second.pid: f"kept runs pid {kept}, not this one",
                         idle.pid: "idle is stopped"}
        dry = await collect_orphans(sup, dry_run=True)
        assert {d["action"] for d in dry} == {"would kill"} and ghost.poll() is None
        done = await collect_orphans(sup, dry_run=False)
        assert {d["pid"] for d in done} == set(found)
        assert all(d["action"].startswith("killed") for d in done), done
        # a stranger's pid is never signalled, even when handed over as a hypervisor's
        started = psutil.Process(stranger.pid).create_time()
        what = await kill_process(engine.dirs, HypervisorProcess(stranger.pid, started, "idle"))
        assert what.startswith("not killed: pid reused by another program"), what
        assert stranger.poll() is None
        assert sup.handles["kept"].pid == kept and not gone(kept)
        fault.cycle()
    for proc in (ghost, second, idle):
        assert proc.wait(5) != 0


@pytest.mark.fault("3. pid reused by an unrelated process")
async def test_stop_and_rm_never_signal_a_recorded_pid_of_another_program(
        engine: Engine, driver: FakeDriver, fault: FaultRecorder,
        stray: list[subprocess.Popen[bytes]]) -> None:
    await engine.create_machine(spec("vm", stop=FAST))
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        own = sup.handles["vm"].pid
        await sup.detach()  # boxui goes away; the VM runs on
    os.kill(own, signal.SIGKILL)
    stranger = subprocess.Popen(["sleep", "600"])
    stray.append(stranger)
    started = psutil.Process(stranger.pid).create_time()

    def reused(record: RuntimeRecord) -> None:
        record.pid, record.process_start_time = stranger.pid, started

    await engine.update_record("vm", reused)
    async with supervisor(engine, driver).running(recover=recover_machines) as sup:
        assert engine.projection.state_of("vm") is InstanceState.CRASHED
        await sup.stop_machine("vm")
        await sup.stop_machine("vm", force=True)
        await sup.delete_machine("vm")
        fault.cycle()
    assert stranger.poll() is None


async def test_stop_of_a_machine_that_does_not_exist_is_refused(
        engine: Engine, driver: FakeDriver) -> None:
    async with supervisor(engine, driver).running(recover=None) as sup:
        with pytest.raises(BoxuiError):
            await sup.stop_machine("nope")
