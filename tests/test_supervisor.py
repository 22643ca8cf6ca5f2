from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

import backend.supervision.restart_policy as rp
from backend.drivers.base import LaunchSpec, VmHandle
from backend.drivers.errors import PortInUseError
from backend.drivers.qemu.accel import AccelChoice
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.event_bus import Missed
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import BootFiles, ProgressFn
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.ports import PORT_ATTEMPTS
from backend.supervision.supervisor import MachineBusyError, Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver


def make_supervisor(engine: Engine, driver: FakeDriver, **kw: object) -> Supervisor:
    return Supervisor(engine, driver, FakeBootFiles(),
                      accel_for=lambda requested: AccelChoice(accel="tcg", reason="test"),
                      **kw)  # type: ignore[arg-type]


@pytest.fixture
async def driver() -> AsyncIterator[FakeDriver]:
    fake = FakeDriver()
    yield fake
    fake.kill_all()


def verbs(engine: Engine, name: str) -> list[str]:
    return [e.type.rsplit(".", 1)[1] for e in read_log(engine.dirs.event_log).events
            if e.subject == name]


async def wait_state(engine: Engine, name: str, state: InstanceState, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while engine.projection.state_of(name) is not state:
            await asyncio.sleep(0.02)


async def test_start_stop_cycle(engine: Engine, driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        assert engine.projection.state_of("vm") is InstanceState.READY
        record = engine.store.load_record("vm")
        assert record.pid == sup.handles["vm"].pid and record.process_start_time
        assert record.persisted is PersistedState.RUNNING and record.accel == "tcg"
        assert psutil.pid_exists(record.pid)
        pid = record.pid
        await sup.stop_machine("vm")
        assert engine.projection.state_of("vm") is InstanceState.STOPPED
        assert engine.store.load_record("vm").pid is None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert verbs(engine, "vm") == ["creating", "created", "booting", "ready", "stopping",
                                   "stopped"]


async def test_twenty_concurrent_starts_make_one_process(engine: Engine,
                                                          driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = 0.3
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await asyncio.gather(*(sup.start_machine("vm") for _ in range(20)))
        assert driver.starts == {"vm": 1}
        assert engine.projection.state_of("vm") is InstanceState.READY


async def test_guest_exit_is_noticed_within_a_second(engine: Engine,
                                                      driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await wait_state(engine, "vm", InstanceState.CRASHED, timeout=1.0)
        assert loop.time() - t0 < 1.0
        machine = engine.machine("vm")
        assert machine.reason and "exited" in machine.reason
        assert engine.store.load_record("vm").pid is None


# the crash loop (back-off, then failed) is tested in tests/faults/test_crash_loop.py


async def started_again(driver: FakeDriver, name: str, within: float) -> bool:
    """Whether `name` is started a second time within `within` seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while driver.starts.get(name, 0) < 2:
                await asyncio.sleep(0.01)
    return driver.starts.get(name, 0) >= 2


@pytest.mark.parametrize(("policy", "restarts"), [("never", False), ("on-failure", True)])
async def test_policy_decides_whether_a_crashed_machine_restarts(
        engine: Engine, driver: FakeDriver, policy: str, restarts: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The back-off is shortened to 0.05 s, so a restart the policy allowed comes within
    a fraction of a second: `on-failure` shows it does, and `never` staying crashed
    for ten times that delay is then the policy's doing, not the clock's."""
    monkeypatch.setattr(rp, "BASE_DELAY", 0.05)
    await engine.create_machine(spec("vm", restart=policy))
    driver.script("vm").die_after = 0.05
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        await wait_state(engine, "vm", InstanceState.CRASHED)
        assert await started_again(driver, "vm", within=5.0 if restarts else 0.5) is restarts
        if not restarts:
            assert driver.starts["vm"] == 1
            assert engine.projection.state_of("vm") is InstanceState.CRASHED


class PortRaceDriver(FakeDriver):
    """Another process takes the SSH port of the first `lost_races` launches."""

    def __init__(self, lost_races: int = 0) -> None:
        super().__init__()
        self.lost_races = lost_races
        self.launches: list[LaunchSpec] = []

    def __post_init__(self) -> None:
        FakeDriver.__init__(self)  # the dataclass __init__ does not call it

    async def start(self, spec: LaunchSpec) -> VmHandle:
        self.launches.append(spec)
        if len(self.launches) <= self.lost_races:
            raise PortInUseError(f"port {spec.ssh_port} is taken")
        return await super().start(spec)


async def test_lost_port_race_is_retried_on_another_port(engine: Engine) -> None:
    await engine.create_machine(spec("vm", ports=[{"guest": 80}]))
    driver = PortRaceDriver(lost_races=2)
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
            await sup.start_machine("vm")
            assert engine.projection.state_of("vm") is InstanceState.READY
            tried = [launch.ssh_port for launch in driver.launches]
            assert len(set(tried)) == 3, tried
            record = engine.store.load_record("vm")
            assert record.ssh_port == sup.handles["vm"].ssh_port == tried[-1]
            # the forwarded port is picked again with the SSH port (either may be the one
            # taken), and the record follows
            forwards = [launch.port_forwards for launch in driver.launches]
            assert len(set(forwards)) == 3, forwards
            assert record.ports == {"80": forwards[-1][0][0]}
    finally:
        driver.kill_all()


async def test_port_race_lost_every_time_fails_the_boot(engine: Engine) -> None:
    await engine.create_machine(spec("vm"))
    driver = PortRaceDriver(lost_races=PORT_ATTEMPTS)
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        with pytest.raises(PortInUseError):
            await sup.start_machine("vm")
        assert len(driver.launches) == PORT_ATTEMPTS
        assert engine.projection.state_of("vm") is InstanceState.FAILED
        assert "is taken" in (engine.machine("vm").reason or "")


async def test_boot_failure_is_failed_with_reason(engine: Engine, driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    driver.script("vm").fail_boot = "kernel panic in the guest"
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        with pytest.raises(BoxuiError, match="kernel panic"):
            await sup.start_machine("vm")
        assert engine.projection.state_of("vm") is InstanceState.FAILED
        assert engine.machine("vm").reason == "kernel panic in the guest"
        assert ("kill", "vm") in driver.calls
        assert "vm" not in sup.handles


async def test_stop_during_boot_aborts_it(engine: Engine, driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = 30
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        start = asyncio.create_task(sup.start_machine("vm"))
        await wait_state(engine, "vm", InstanceState.BOOTING)
        await asyncio.sleep(0.1)
        await asyncio.wait_for(sup.stop_machine("vm"), 3)
        await asyncio.wait_for(start, 3)
        assert engine.projection.state_of("vm") is InstanceState.STOPPED


async def test_stop_before_launch_leaves_no_abort_behind(engine: Engine,
                                                        driver: FakeDriver) -> None:
    """A stop that comes while the boot files are still being prepared (no process yet)
    ends that boot as stopped; a later boot that fails then fails as any boot does,
    not as "stopped before it was ready" by a stop long done."""
    await engine.create_machine(spec("vm"))
    gate = asyncio.Event()
    sup = Supervisor(engine, driver, FakeBootFiles(gate),
                     accel_for=lambda requested: AccelChoice(accel="tcg", reason="test"))
    async with sup.running(recover=recover_machines):
        start = asyncio.create_task(sup.start_machine("vm"))
        await wait_state(engine, "vm", InstanceState.BOOTING)
        stop = asyncio.create_task(sup.stop_machine("vm"))
        await asyncio.sleep(0.1)  # the stop waits for the boot, which has no process yet
        gate.set()
        await asyncio.wait_for(asyncio.gather(start, stop), 5)
        assert engine.projection.state_of("vm") is InstanceState.STOPPED
        assert driver.starts.get("vm", 0) <= 1 and "vm" not in sup.handles
        driver.script("vm").fail_boot = "kernel panic in the guest"
        with pytest.raises(BoxuiError, match="kernel panic"):
            await asyncio.wait_for(sup.start_machine("vm"), 5)
        assert engine.projection.state_of("vm") is InstanceState.FAILED


async def test_delete_running_needs_force(engine: Engine, driver: FakeDriver) -> None:
    await engine.create_machine(spec("vm"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        with pytest.raises(MachineBusyError, match="--force"):
            await sup.delete_machine("vm")
        pid = sup.handles["vm"].pid
        await sup.delete_machine("vm", force=True)
        assert not engine.dirs.machine_dir("vm").exists()
        assert engine.projection.state_of("vm") is None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


async def test_detach_leaves_vms_running_and_recovery_adopts(home: Path,
                                                             driver: FakeDriver) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("a"))
    await engine.create_machine(spec("b"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("a")
        await sup.start_machine("b")
        pids = {n: h.pid for n, h in sup.handles.items()}
    await engine.close()
    assert all(psutil.pid_exists(p) for p in pids.values()), "VMs must outlive the supervisor"
    os.kill(pids["b"], signal.SIGKILL)  # dies while no supervisor runs

    engine = await Engine.open(home)
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
            assert sup.handles["a"].pid == pids["a"]
            assert engine.projection.state_of("a") is InstanceState.READY
            assert engine.projection.state_of("b") is InstanceState.CRASHED
            assert engine.machine("b").reason == "process gone while boxui was down"
            assert verbs(engine, "a")[-1] == "adopted"
            await sup.start_machine("a")  # already active: no second process
            assert driver.starts["a"] == 1
    finally:
        await engine.close()


async def test_pid_reused_is_not_adopted_nor_signalled(home: Path, driver: FakeDriver) -> None:
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        real = sup.handles["vm"].pid
    os.kill(real, signal.SIGKILL)
    # an unrelated live process takes the record's place
    other = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        def hijack(record):  # type: ignore[no-untyped-def]
            record.pid = other.pid

        engine.store.update_record("vm", hijack)
        await engine.close()
        engine = await Engine.open(home)
        async with make_supervisor(engine, driver).running(recover=recover_machines):
            assert engine.projection.state_of("vm") is InstanceState.CRASHED
            assert "pid reused" in (engine.machine("vm").reason or "")
        assert other.returncode is None and psutil.Process(other.pid).status() != "zombie"
    finally:
        other.kill()
        await other.wait()
        await engine.close()


@pytest.mark.parametrize("delay", [0.0, 0.1], ids=["before-the-wait", "during-the-wait"])
async def test_stop_aborts_a_boot_resumed_by_recovery(home: Path, driver: FakeDriver, delay: float,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """boxui died while a guest booted; the next supervisor re-adopts it and waits for it
    in the background. A stop meanwhile must abort that wait, not race it to 'ready'."""
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = 30
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        start = asyncio.create_task(sup.start_machine("vm"))
        await wait_state(engine, "vm", InstanceState.BOOTING)
        while "vm" not in sup.handles:
            await asyncio.sleep(0.02)
        start.cancel()  # boxui dies mid-boot; the guest keeps booting
        with pytest.raises(asyncio.CancelledError):
            await start
    await engine.close()

    engine = await Engine.open(home)
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
            assert engine.projection.state_of("vm") is InstanceState.BOOTING
            await asyncio.sleep(delay)
            await asyncio.wait_for(sup.stop_machine("vm"), 5)
            await asyncio.sleep(0.2)
            assert engine.projection.state_of("vm") is InstanceState.STOPPED
            assert "failed" not in caplog.text and "illegal" not in caplog.text
    finally:
        await engine.close()


async def _cut_short_boot(home: Path, driver: FakeDriver, boot_delay: float) -> None:
    """boxui dies while `vm` boots: it stays `booting`, its guest running on."""
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = boot_delay
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
            start = asyncio.create_task(sup.start_machine("vm"))
            await wait_state(engine, "vm", InstanceState.BOOTING)
            while "vm" not in sup.handles:
                await asyncio.sleep(0.02)
    finally:
        start.cancel()
        await engine.close()


async def test_start_of_a_re_adopted_boot_waits_for_ready(home: Path,
                                                          driver: FakeDriver) -> None:
    await _cut_short_boot(home, driver, boot_delay=1.0)
    engine = await Engine.open(home)
    initrd = engine.dirs.machine_dir("vm") / "initrd.img"
    initrd.write_bytes(b"this boot's seed")  # as the boot cut short had written it
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
            assert engine.projection.state_of("vm") is InstanceState.BOOTING
            await asyncio.wait_for(sup.start_machine("vm"), 10)
            assert engine.projection.state_of("vm") is InstanceState.READY
            assert not initrd.exists()  # released once ready, as by the boot it finished
            assert driver.starts == {"vm": 1}  # the adopted guest, not a second one
            assert "re-adopted pid" in (read_log(engine.dirs.event_log).events[-1].message)
    finally:
        await engine.close()


async def test_start_of_a_re_adopted_boot_that_fails_fails(home: Path,
                                                           driver: FakeDriver) -> None:
    await _cut_short_boot(home, driver, boot_delay=0.5)
    driver.script("vm").fail_boot = "kernel panic in the guest"
    engine = await Engine.open(home)
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
            with pytest.raises(BoxuiError, match="kernel panic in the guest"):
                await asyncio.wait_for(sup.start_machine("vm"), 10)
            assert engine.projection.state_of("vm") is InstanceState.FAILED
            assert driver.starts == {"vm": 1}
    finally:
        await engine.close()


async def test_starts_joining_a_boot_share_its_failure(engine: Engine,
                                                       driver: FakeDriver) -> None:
    """A start that finds the machine booting waits for that boot: it fails with the
    boot's reason, rather than returning at once or booting it a second time."""
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = 0.3
    driver.script("vm").fail_boot = "kernel panic in the guest"
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        first = asyncio.create_task(sup.start_machine("vm"))
        await wait_state(engine, "vm", InstanceState.BOOTING)
        results = await asyncio.wait_for(asyncio.gather(
            first, sup.start_machine("vm"), sup.start_machine("vm"),
            return_exceptions=True), 10)
        assert all(isinstance(r, BoxuiError) and "kernel panic" in str(r) for r in results)
        assert driver.starts == {"vm": 1}
        assert engine.projection.state_of("vm") is InstanceState.FAILED


async def test_a_start_given_up_does_not_cut_the_boot_short(engine: Engine,
                                                             driver: FakeDriver) -> None:
    """The caller of a start may go away (a CLI killed, a connection closed): the boot
    is the supervisor's and goes on to ready."""
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = 0.5
    events = engine.subscribe(machine="vm")
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        start = asyncio.create_task(sup.start_machine("vm"))
        await wait_state(engine, "vm", InstanceState.BOOTING)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        async with asyncio.timeout(10):
            async for event in events:
                if not isinstance(event, Missed) and event.data.get("to") == "ready":
                    break
        assert engine.projection.state_of("vm") is InstanceState.READY


async def test_restart_of_a_booting_machine_boots_it_afresh(engine: Engine,
                                                            driver: FakeDriver) -> None:
    """`restart` asks for a new boot: one in progress is aborted, not waited for."""
    await engine.create_machine(spec("vm"))
    driver.script("vm").boot_delay = 30
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        first = asyncio.create_task(sup.start_machine("vm"))
        await wait_state(engine, "vm", InstanceState.BOOTING)
        while "vm" not in sup.handles:
            await asyncio.sleep(0.02)
        driver.script("vm").boot_delay = 0
        await asyncio.wait_for(sup.restart_machine("vm"), 10)
        assert engine.projection.state_of("vm") is InstanceState.READY
        assert driver.starts == {"vm": 2}
        await asyncio.wait_for(first, 5)  # the aborted boot's start returns, no error


async def test_a_stop_cut_short_is_finished_by_recovery(home: Path, driver: FakeDriver) -> None:
    """boxui died while it powered a guest off: the next supervisor finishes the stop
    instead of adopting the guest as ready."""
    engine = await Engine.open(home)
    await engine.create_machine(spec("vm"))
    async with make_supervisor(engine, driver).running(recover=recover_machines) as sup:
        await sup.start_machine("vm")
        pid = sup.handles["vm"].pid
        await engine.transition("vm", Verb.STOPPING, message="powering off")  # then it died
    await engine.close()
    assert psutil.pid_exists(pid)

    engine = await Engine.open(home)
    try:
        async with make_supervisor(engine, driver).running(recover=recover_machines):
            await wait_state(engine, "vm", InstanceState.STOPPED)
            assert verbs(engine, "vm")[-2:] == ["stopping", "stopped"]
            assert driver.starts == {"vm": 1}
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        await engine.close()


class OneBootInitrd(FakeBootFiles):
    """An initrd written per boot, as the default guest's (`single_use`), or the
    user's own (`single_use=False`), which boxui must never touch."""

    def __init__(self, single_use: bool) -> None:
        super().__init__()
        self.single_use = single_use
        self.written: list[Path] = []

    async def prepare(self, spec: MachineSpec, machine_dir: Path,
                      progress: ProgressFn | None = None) -> BootFiles:
        machine_dir.mkdir(parents=True, exist_ok=True)
        initrd = machine_dir / f"initrd-{len(self.written)}.img"
        initrd.write_bytes(b"seed" * 1024)
        self.written.append(initrd)
        return BootFiles(Path("/fake/vmlinuz"), initrd, "", single_use=self.single_use)


@pytest.mark.parametrize("single_use", [True, False])
async def test_a_boots_own_initrd_is_released_once_ready(engine: Engine, driver: FakeDriver,
                                                         single_use: bool) -> None:
    await engine.create_machine(spec("vm"))
    files = OneBootInitrd(single_use)
    driver.script("vm").fail_boot = "no ready marker"
    sup = Supervisor(engine, driver, files,
                     accel_for=lambda requested: AccelChoice(accel="tcg", reason="test"))
    async with sup.running(recover=recover_machines):
        with pytest.raises(BoxuiError):
            await sup.start_machine("vm")
        # a boot that never got to ready may not have read it: kept for a look
        assert files.written[0].read_bytes() == b"seed" * 1024
        driver.script("vm").fail_boot = None
        await sup.start_machine("vm")
        assert engine.projection.state_of("vm") is InstanceState.READY
        assert files.written[1].exists() is not single_use
