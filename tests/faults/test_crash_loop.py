"""Item 9: a guest that dies at once is restarted with growing delays and declared failed
after the burst limit; nothing spins. (Moved here from tests/test_supervisor.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time

import pytest

import backend.supervision.restart_policy as rp
from backend.drivers.qemu.driver import QemuDriver
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import IMAGE_CACHE, spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.faults.conftest import FaultRecorder
from tests.faults.support import HAS_QEMU, hypervisors, remove_home, short_home

BASE = 0.05  # the policy's doubling, on a faster clock


@pytest.mark.fault("9. crash loop")
@pytest.mark.parametrize("dies", ["at once", "during boot"])
async def test_crash_loop_backs_off_then_fails(engine: Engine, dies: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               fault: FaultRecorder) -> None:
    monkeypatch.setattr(rp, "BASE_DELAY", BASE)
    await engine.create_machine(spec("loop", restart="always"))
    driver = FakeDriver()
    script = driver.script("loop")
    if dies == "at once":
        script.die_after = 0.0
    else:
        script.boot_delay = 0.02
        script.fail_boot = "guest kernel panicked"
    try:
        async with Supervisor(engine, driver, FakeBootFiles(),
                              accel_for=fixed_accel).running(recover=recover_machines) as sup:
            with contextlib.suppress(BoxuiError):
                await sup.start_machine("loop")
            async with asyncio.timeout(10):
                while engine.projection.state_of("loop") is not InstanceState.FAILED or \
                        "gave up" not in (engine.machine("loop").reason or "") + \
                        read_log(engine.dirs.event_log).events[-1].message:
                    await asyncio.sleep(0.01)
            assert driver.starts["loop"] == rp.BURST_LIMIT
            events = [e for e in read_log(engine.dirs.event_log).events
                      if e.subject == "loop"]
            boots = [e.time for e in events if e.type.endswith(".booting")]
            downs = [e for e in events if e.type.endswith((".crashed", ".failed"))]
            assert "restarting in" in downs[0].message
            assert "gave up after 5 failures" in downs[-1].message
            # each restart waited at least its planned delay, and the delays grow
            ends = [next(d.time for d in downs if d.time >= b) for b in boots[:-1]]
            waits = [(b - e).total_seconds() for e, b in zip(ends, boots[1:], strict=True)]
            planned = [BASE * 2 ** i for i in range(len(waits))]
            assert all(w >= p * 0.9 for w, p in zip(waits, planned, strict=True)), waits
            assert all(b > a for a, b in itertools.pairwise(waits)), waits
            # failed means left alone: no more starts, no busy loop
            cpu, logged = time.process_time(), len(events)
            await asyncio.sleep(1.0)
            assert time.process_time() - cpu < 0.2, "something spins after the crash loop"
            assert driver.starts["loop"] == rp.BURST_LIMIT
            assert len([e for e in read_log(engine.dirs.event_log).events
                        if e.subject == "loop"]) == logged
            assert "loop" not in sup.handles
    finally:
        driver.kill_all()
    fault.cycle(rp.BURST_LIMIT)


@pytest.mark.vm
@pytest.mark.fault("9. crash loop (real QEMU)")
@pytest.mark.skipif(not HAS_QEMU or not (IMAGE_CACHE / "current.json").exists(),
                    reason="needs qemu-system-x86_64 and a built guest image")
@pytest.mark.skipif(not os.environ.get("BOXUI_SLOW_FAULTS"),
                    reason="40 s under TCG (each panic takes 6-16 s): BOXUI_SLOW_FAULTS=1")
async def test_real_guest_that_panics_at_once(monkeypatch: pytest.MonkeyPatch,
                                              fault: FaultRecorder) -> None:
    """The real kernel with a junk initrd panics at once; QEMU exits each time, and no
    QEMU is left behind. Opt-in: the test double above covers the policy every run."""
    monkeypatch.setattr(rp, "BASE_DELAY", BASE)
    home = short_home("loop")
    kernel = next(IMAGE_CACHE.glob("*/vmlinuz"))
    junk = home / "junk.img"
    junk.write_bytes(bytes(range(256)) * 64)
    try:
        engine = await Engine.open(home)
        try:
            await engine.create_machine(spec("loop", restart="always", memory_mib=96,
                                             kernel=str(kernel), initrd=str(junk)))
            sup = Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images),
                             boot_timeout=60)
            async with sup.running(recover=recover_machines):
                with contextlib.suppress(BoxuiError):
                    await sup.start_machine("loop")
                async with asyncio.timeout(120):
                    while "gave up" not in read_log(engine.dirs.event_log).events[-1].message:
                        await asyncio.sleep(0.1)
                events = [e for e in read_log(engine.dirs.event_log).events
                          if e.subject == "loop"]
                assert sum(e.type.endswith(".booting") for e in events) == rp.BURST_LIMIT
                assert engine.projection.state_of("loop") is InstanceState.FAILED
                await asyncio.sleep(0.5)
                assert hypervisors(home) == {}, "no QEMU is left behind"
        finally:
            await engine.close()
    finally:
        remove_home(home)
    fault.cycle(rp.BURST_LIMIT)
