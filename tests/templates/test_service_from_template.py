"""A service made from a template: each instance restores the template's snapshot (warm
start), and a service size the snapshot cannot serve is refused before anything is
written."""

from __future__ import annotations

import pytest

from backend.services.manager import ServiceManager
from backend.services.service_spec import ServiceSpec
from backend.state.engine import Engine
from backend.supervision.machine_exec import MachineExec
from backend.supervision.supervisor import Supervisor
from backend.templates.errors import SnapshotMismatchError
from tests.fake_driver import FakeBootFiles
from tests.templates.helpers import TCG, SnapshotDriver, fabricate, snapshot_info


async def test_service_instances_restore_the_template_snapshot(engine: Engine) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info(vcpus=2, memory_mib=384))
    driver = SnapshotDriver()
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=lambda _r: TCG)
    try:
        async with sup.running(recover=None):
            manager = ServiceManager(sup, MachineExec(engine))
            await manager.start()
            with pytest.raises(SnapshotMismatchError, match="memory_mib 256 requested"):
                await manager.create(ServiceSpec(name="api", template="web:worker",
                                                 vcpus=2, memory_mib=256, replicas=1))
            assert not manager.store.path("api").exists()
            generation = await manager.create(ServiceSpec(
                name="web", template="web:worker", vcpus=2, memory_mib=384, replicas=2))
            await manager.wait_settled("web", generation)
            view = await manager.view("web")
            assert [i.state.value for i in view.instances] == ["ready", "ready"]
            for instance in view.instances:
                spec = engine.machine(instance.id).spec
                assert spec is not None and spec.template == "web:worker"
                record = engine.store.load_record(instance.id)
                assert record.restored_from is not None, "warm: restored, not cold-booted"
    finally:
        driver.kill_all()
