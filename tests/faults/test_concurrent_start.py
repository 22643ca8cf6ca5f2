"""Item 8 (test double part): 20 concurrent starts per machine issued while a new
supervisor is still recovering: one running, one whose process vanished while boxui was
down, one whose pid was never recorded (boxui died right after launching it) and one
stopped. Every machine ends with exactly one hypervisor if it is active, none if not.
The real-guest race is in test_real_guests.py."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.faults.conftest import FaultRecorder
from tests.faults.support import active, hypervisor_pids, remove_home


@pytest.mark.fault("8. 20 starts racing crash recovery (test double)")
async def test_twenty_starts_race_recovery(home: Path, fault: FaultRecorder) -> None:
    first, second = FakeDriver(), FakeDriver()
    try:
        engine = await Engine.open(home)
        for name in ("up", "vanished", "unrecorded", "down"):
            await engine.create_machine(spec(name))
        async with Supervisor(engine, first, FakeBootFiles(),
                              accel_for=fixed_accel).running(recover=recover_machines) as sup:
            for name in ("up", "vanished", "unrecorded"):
                await sup.start_machine(name)
            pids = {n: h.pid for n, h in sup.handles.items()}

        def forget_pid(record: RuntimeRecord) -> None:
            record.pid = record.process_start_time = None

        engine.store.update_record("unrecorded", forget_pid)
        await engine.close()
        os.kill(pids["vanished"], signal.SIGKILL)

        engine = await Engine.open(home)
        try:
            sup = Supervisor(engine, second, FakeBootFiles(), accel_for=fixed_accel)
            async with sup.running(recover=None):
                names = ("up", "vanished", "unrecorded", "down")
                await asyncio.gather(recover_machines(sup),
                                     *(sup.start_machine(n) for n in names for _ in range(20)))
                running = hypervisor_pids(home)
                for name in names:
                    want = 1 if active(engine.projection.state_of(name)) else 0
                    assert len(running.get(name, [])) == want, (name, running)
                assert running["up"] == [pids["up"]]
                assert running["unrecorded"] == [pids["unrecorded"]]
                assert engine.projection.state_of("down") is InstanceState.READY
                assert second.starts.get("down") == 1
                assert "up" not in second.starts and "unrecorded" not in second.starts
                assert second.starts.get("vanished", 0) <= 1
        finally:
            await engine.close()
    finally:
        first.kill_all()
        second.kill_all()
        remove_home(home)
    fault.cycle(80)
