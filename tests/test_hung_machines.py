"""Hung hypervisors and unhealthy guests, with the stand-in driver (issue 19).

The stand-in's `hang_qmp` makes a machine's QMP stop answering as a SIGSTOPped QEMU's
does; a fake exec runner plays the guest's liveness command. Heartbeats and probes run
fast here (tenths of seconds); every wait has a timeout that fails the test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from backend.drivers.base import VmHandle
from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState, Verb
from backend.state.machine_spec import LivenessSpec, MachineSpec
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.liveness import LivenessProbes
from backend.supervision.machine_exec import ExecOutput
from backend.supervision.supervisor import Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeDriver
from tests.test_supervisor import make_supervisor, verbs, wait_state

S = InstanceState


@pytest.fixture
async def driver() -> AsyncIterator[FakeDriver]:
    fake = FakeDriver()
    yield fake
    fake.kill_all()


def fast(sup: Supervisor, grace: float = 0.3) -> Supervisor:
    """Beats every 50 ms, each allowed 50 ms, two misses make a machine unresponsive."""
    sup.heartbeat.interval = 0.05
    sup.heartbeat.timeout = 0.05
    sup.unresponsive_grace = grace
    return sup


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def last_event_data(engine: Engine, name: str, verb: str) -> dict[str, object]:
    found = [e for e in read_log(engine.dirs.event_log).events
             if e.subject == name and e.type.endswith(f".{verb}")]
    assert found, f"no {verb} event for {name}"
    return found[-1].data


async def test_hung_qmp_becomes_unresponsive_and_recovers(engine: Engine,
                                                          driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    async with fast(make_supervisor(engine, driver)).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        driver.hang_qmp("vm")
        await wait_state(engine, "vm", S.UNRESPONSIVE, timeout=5)
        assert "QMP did not answer" in (engine.projection.get("vm").reason or "")  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # beyond the grace: with no restart policy it stays
        assert engine.projection.state_of("vm") is S.UNRESPONSIVE
        assert sup.handles["vm"].pid == pid and not gone(pid)
        driver.hang_qmp("vm", hung=False)  # SIGCONT
        await wait_state(engine, "vm", S.READY, timeout=5)
        assert sup.handles["vm"].pid == pid and driver.starts["vm"] == 1
    assert verbs(engine, "vm")[-2:] == ["unresponsive", "recovered"]


async def test_unresponsive_machine_is_killed_and_restarted_by_policy(
        engine: Engine, driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm", restart="on-failure"))
    async with fast(make_supervisor(engine, driver)).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        driver.hang_qmp("vm")
        await wait_state(engine, "vm", S.UNRESPONSIVE, timeout=5)
        await wait_state(engine, "vm", S.CRASHED, timeout=5)
        assert gone(pid), "the hung process is killed, not left behind"
        data = last_event_data(engine, "vm", "crashed")
        assert "killed: QMP did not answer" in str(data["reason"])
        assert "restarting in 1 s" in str(data["message"])
        await wait_state(engine, "vm", S.READY, timeout=10)
        assert driver.starts["vm"] == 2 and sup.handles["vm"].pid != pid
        await asyncio.sleep(0.3)  # the new process answers: it stays ready
        assert engine.projection.state_of("vm") is S.READY


async def test_restart_policy_of_a_hung_machine_is_read_off_the_event_loop(
        engine: Engine, driver: FakeDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading machine.toml blocks (a slow disk, a busy host): it must not stall the
    event loop, which serves every other machine, at each beat of a hung one."""
    await engine.create_machine(spec("vm", restart="never"))
    loop_thread, readers = threading.get_ident(), []
    load_spec = engine.store.load_spec

    def watched(name: str) -> MachineSpec:
        readers.append(threading.get_ident())
        return load_spec(name)

    monkeypatch.setattr(engine.store, "load_spec", watched)
    async with fast(make_supervisor(engine, driver), grace=0.1).running(
            recover=recover_machines) as sup:
        await sup.start_machine("vm")
        readers.clear()
        driver.hang_qmp("vm")
        await wait_state(engine, "vm", S.UNRESPONSIVE, timeout=5)
        async with asyncio.timeout(5):
            while not readers:  # the policy is read once the grace has passed
                await asyncio.sleep(0.02)
        assert loop_thread not in readers
        assert engine.projection.state_of("vm") is S.UNRESPONSIVE  # "never": left alone
        driver.hang_qmp("vm", hung=False)


async def test_recovery_after_grace_never_kills(engine: Engine, driver: FakeDriver) -> None:
    """A QEMU let go (SIGCONT) within the grace recovers even with a restart policy."""
    await engine.create_machine(spec("vm", restart="always"))
    sup = fast(make_supervisor(engine, driver), grace=30)
    async with sup.running(recover=recover_machines):
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        driver.hang_qmp("vm")
        await wait_state(engine, "vm", S.UNRESPONSIVE, timeout=5)
        driver.hang_qmp("vm", hung=False)
        await wait_state(engine, "vm", S.READY, timeout=5)
        assert not gone(pid) and driver.starts["vm"] == 1


async def test_stop_force_kills_an_unresponsive_machine(engine: Engine,
                                                        driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    async with fast(make_supervisor(engine, driver)).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        driver.hang_qmp("vm")
        await wait_state(engine, "vm", S.UNRESPONSIVE, timeout=5)
        async with asyncio.timeout(5):
            await sup.stop_machine("vm", force=True)
        assert engine.projection.state_of("vm") is S.STOPPED and gone(pid)


async def test_busy_machine_resumes_ready_and_draining_resumes_draining(
        engine: Engine, driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    async with fast(make_supervisor(engine, driver)).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        await engine.transition("vm", Verb.DRAINING, message="test")
        driver.hang_qmp("vm")
        await wait_state(engine, "vm", S.UNRESPONSIVE, timeout=5)
        driver.hang_qmp("vm", hung=False)
        await wait_state(engine, "vm", S.DRAINING, timeout=5)


async def test_recovery_adopts_a_hung_hypervisor_as_unresponsive(home: Path,
                                                                 driver: FakeDriver) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
    await engine.close()
    driver.hang_qmp("vm")  # hangs while no supervisor runs

    engine = await Engine.open(home)
    try:
        sup = fast(make_supervisor(engine, driver))
        async with asyncio.timeout(10), sup.running(recover=recover_machines):
            assert sup.handles["vm"].pid == pid, "ours, so adopted, never orphaned"
            assert engine.projection.state_of("vm") is S.UNRESPONSIVE
            data = last_event_data(engine, "vm", "unresponsive")
            assert f"re-adopted pid {pid}" in str(data["message"])
            assert "QMP did not answer" in str(data["reason"])
            driver.hang_qmp("vm", hung=False)
            await wait_state(engine, "vm", S.READY, timeout=5)
            await sup.stop_machine("vm", force=True)
            assert gone(pid)
    finally:
        await engine.close()


# --- guest liveness -------------------------------------------------------------------


class ProbeRunner:
    """The guest's liveness command: passes while `healthy`, fails (exit 1) otherwise;
    or, with `sick_pid`, fails only in the guest of that process (a restart is healthy)."""

    def __init__(self) -> None:
        self.healthy = True
        self.sick_pid: int | None = None
        self.calls: list[list[str]] = []

    async def __call__(self, engine: Engine, name: str, port: int, argv: list[str],
                       stdin: bytes | None, timeout: float | None) -> ExecOutput:
        self.calls.append(argv)
        sick = self.sick_pid is not None and engine.store.load_record(name).pid == self.sick_pid
        if self.healthy and not sick:
            return ExecOutput(0, b"", b"")
        return ExecOutput(1, b"", b"sshd: not running\n")


PROBE = {"exec": "pidof dropbear", "interval": 1, "timeout": 1, "failures": 3}


def probed(sup: Supervisor, runner: ProbeRunner) -> Supervisor:
    """Exec probes through `runner`, every 50 ms (machine.toml allows 1 s at least)."""
    sup.liveness.runner = runner

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / 20)

    sup.liveness.sleep = sleep
    return fast(sup)


async def test_failing_liveness_probe_makes_unhealthy_then_ready(engine: Engine,
                                                                 driver: FakeDriver) -> None:
    runner = ProbeRunner()
    await engine.create_machine(spec("vm", liveness=PROBE))
    async with probed(make_supervisor(engine, driver), runner).running(
            recover=recover_machines) as sup:
        await sup.start_machine("vm")
        async with asyncio.timeout(5):
            while len(runner.calls) < 2:
                await asyncio.sleep(0.02)
        assert runner.calls[0] == ["sh", "-c", "pidof dropbear"]
        assert engine.projection.state_of("vm") is S.READY
        runner.healthy = False
        await wait_state(engine, "vm", S.UNHEALTHY, timeout=5)
        machine = engine.projection.get("vm")
        assert machine is not None and \
            machine.reason == "liveness probe `pidof dropbear` exited 1: sshd: not running"
        data = last_event_data(engine, "vm", "unhealthy")
        assert str(data["message"]).startswith("3 liveness probes failed in a row")
        runner.healthy = True
        await wait_state(engine, "vm", S.READY, timeout=5)
        assert driver.starts["vm"] == 1
    assert verbs(engine, "vm")[-2:] == ["unhealthy", "recovered"]


async def test_unhealthy_machine_is_killed_and_restarted_by_policy(
        engine: Engine, driver: FakeDriver) -> None:
    runner = ProbeRunner()
    await engine.create_machine(spec("vm", liveness=PROBE, restart="on-failure"))
    async with probed(make_supervisor(engine, driver), runner).running(
            recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        runner.sick_pid = pid  # the fresh guest of the restart is healthy
        # (unhealthy lasts only until the kill: too short to poll for)
        await wait_state(engine, "vm", S.CRASHED, timeout=5)
        assert verbs(engine, "vm")[-2:] == ["unhealthy", "crashed"]
        assert gone(pid)
        await wait_state(engine, "vm", S.READY, timeout=10)
        assert driver.starts["vm"] == 2
        await asyncio.sleep(0.3)
        assert engine.projection.state_of("vm") is S.READY


async def test_probes_stop_with_the_machine(engine: Engine, driver: FakeDriver) -> None:
    runner = ProbeRunner()
    await engine.create_machine(spec("vm", liveness=PROBE))
    await engine.create_machine(spec("plain"))
    async with probed(make_supervisor(engine, driver), runner).running(
            recover=recover_machines) as sup:
        await sup.start_machine("vm")
        await sup.start_machine("plain")
        async with asyncio.timeout(5):
            while "vm" not in sup.liveness.tasks:
                await asyncio.sleep(0.02)
        assert "plain" not in sup.liveness.tasks  # no liveness in its machine.toml
        task = sup.liveness.tasks["vm"]
        await sup.stop_machine("vm")
        async with asyncio.timeout(5):
            while not task.done():
                await asyncio.sleep(0.02)
        assert "vm" not in sup.liveness.tasks
        calls = len(runner.calls)
        await asyncio.sleep(0.3)
        assert len(runner.calls) == calls


async def test_port_probe_reads_the_ssh_greeting(engine: Engine) -> None:
    """Port 22 passes only when something greets as SSH: a wedged sshd still accepts."""
    greeting = b"SSH-2.0-dropbear\r\n"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if greet:
            writer.write(greeting)
            await writer.drain()
        await reader.read()  # until the probe hangs up
        writer.close()

    greet = True
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handle = VmHandle(name="vm", pid=1, start_time=0.0, ssh_port=port, boot_id="x",
                      accel="tcg", console_log=Path("/dev/null"), qmp_socket=Path("/dev/null"))
    probes = LivenessProbes(engine, dict, lambda *a: None,  # type: ignore[arg-type]
                            lambda outcome: asyncio.sleep(0))
    probe = LivenessSpec(port=22, timeout=0.3)
    try:
        assert await probes.probe_once("vm", handle, probe) is None
        greet = False
        assert await probes.probe_once("vm", handle, probe) == \
            "liveness probe port 22 did not answer within 0.3 s"
    finally:
        server.close()
        await server.wait_closed()


async def test_health_checks_ssh_on_the_kept_connection(engine: Engine,
                                                        driver: FakeDriver) -> None:
    """The sampler's SSH check is a command on the exec runner's kept connection (one
    handshake per boot), never a connection of its own that the guest's sshd logs."""
    runner = ProbeRunner()
    await engine.create_machine(spec("vm"))
    sup = make_supervisor(engine, driver)
    async with sup.running(recover=recover_machines):
        await sup.start_machine("vm")
        handle = sup.handles["vm"]
        assert sup.health.ssh_check is not None
        assert await sup.health.ssh_check(handle, 1.0) is None  # nothing to run it with
        sup.liveness.runner = runner
        assert await sup.health.ssh_check(handle, 1.0) is True
        runner.healthy = False
        assert await sup.health.ssh_check(handle, 1.0) is False
        assert runner.calls == [["true"], ["true"]]
        await sup.stop_machine("vm")
