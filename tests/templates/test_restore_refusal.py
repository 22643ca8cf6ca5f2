"""A snapshot is restored only into a machine that asks for exactly what it holds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from backend.drivers.base import DriverCapabilities
from backend.drivers.qemu.accel import AccelChoice
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir
from backend.supervision.supervisor import Supervisor
from backend.templates.errors import SnapshotMismatchError, TemplateError
from backend.templates.machine_from_template import spec_from_template
from backend.templates.restore_plan import mismatches, plan_restore
from tests.conftest import BOXUI, cli_env
from tests.fake_driver import FakeBootFiles, FakeDriver
from tests.templates.helpers import (
    QEMU_LIKE,
    REVISION,
    TCG,
    fabricate,
    host_snapshot_info,
    snapshot_info,
)


def test_matching_request_has_no_mismatch() -> None:
    assert mismatches(snapshot_info(), vcpus=1, memory_mib=256, cmdline="", accel=TCG) == []


@pytest.mark.parametrize(("change", "named"), [
    ({"vcpus": 2}, "vcpus 2 requested, snapshot has 1"),
    ({"memory_mib": 512}, "memory_mib 512 requested, snapshot has 256"),
    ({"cmdline": "init=/bin/sh"}, "boot args"),
    ({"accel": AccelChoice(accel="kvm", reason="t")}, "accel kvm requested"),
    ({"accel": AccelChoice(accel="tcg", reason="t", tsc_khz=2_000_000)}, "tsc_early_khz"),
])
def test_each_mismatch_is_named(change: dict[str, object], named: str) -> None:
    request: dict[str, object] = {"vcpus": 1, "memory_mib": 256, "cmdline": "", "accel": TCG}
    found = mismatches(snapshot_info(), **{**request, **change})  # type: ignore[arg-type]
    assert len(found) == 1 and named in found[0]


def test_plan_refuses_naming_every_difference(dirs: StateDir) -> None:
    fabricate(dirs, snapshot=snapshot_info())
    spec = spec_from_template(dirs, "vm", "web:worker", vcpus=2, memory_mib=128)
    with pytest.raises(SnapshotMismatchError) as caught:
        plan_restore(dirs, spec, TCG, QEMU_LIKE)
    text = str(caught.value)
    assert "vcpus 2 requested, snapshot has 1" in text
    assert "memory_mib 128 requested, snapshot has 256" in text
    assert f"revision {REVISION}" in text and "\n" not in text


def test_plan_restores_a_matching_snapshot_and_cold_boots_otherwise(dirs: StateDir) -> None:
    fabricate(dirs, snapshot=snapshot_info())
    spec = spec_from_template(dirs, "vm", "web")  # the only role
    assert spec.template == "web:worker" and spec.template_revision == REVISION
    plan = plan_restore(dirs, spec, TCG, QEMU_LIKE)
    assert plan is not None and plan.snapshot_file.name == "snapshot.bin"
    assert plan.label == f"web:worker@{REVISION}"
    no_snapshots = DriverCapabilities("fake", snapshots=False, graceful_stop=True, accels=())
    assert plan_restore(dirs, spec, TCG, no_snapshots) is None
    assert plan_restore(dirs, MachineSpec(name="plain"), TCG, QEMU_LIKE) is None


def test_image_template_means_cold_boot(dirs: StateDir) -> None:
    fabricate(dirs, "img", memory_mib=300)
    spec = spec_from_template(dirs, "vm", "img:worker")
    assert spec.memory_mib == 300
    assert plan_restore(dirs, spec, TCG, QEMU_LIKE) is None


def test_missing_snapshot_file_is_an_error_not_a_cold_boot(dirs: StateDir) -> None:
    fabricate(dirs, snapshot=snapshot_info())
    role_dir = dirs.root / "templates/web/artifacts" / REVISION / "worker"
    (role_dir / "snapshot.bin").unlink()
    with pytest.raises(TemplateError, match=r"missing snapshot\.bin"):
        plan_restore(dirs, spec_from_template(dirs, "vm", "web"), TCG, QEMU_LIKE)


async def test_start_of_an_edited_machine_is_refused_before_anything_runs(
        engine: Engine) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    spec = spec_from_template(engine.dirs, "vm", "web:worker")
    await engine.create_machine(spec.model_copy(update={"memory_mib": 512}))
    driver = FakeDriver()
    driver.capabilities = lambda: QEMU_LIKE  # type: ignore[method-assign]
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=lambda _r: TCG)
    try:
        async with sup.running(recover=None):
            with pytest.raises(SnapshotMismatchError, match="memory_mib 512 requested"):
                await sup.start_machine("vm")
    finally:
        driver.kill_all()
    assert driver.calls == []
    assert engine.machine("vm").state is InstanceState.STOPPED


async def test_image_template_machine_cold_boots_through_the_fake_driver(
        engine: Engine) -> None:
    fabricate(engine.dirs, "img")
    await engine.create_machine(spec_from_template(engine.dirs, "vm", "img"))
    driver = FakeDriver()
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=lambda _r: TCG)
    try:
        async with sup.running(recover=None):
            await sup.start_machine("vm")
            assert engine.machine("vm").state is InstanceState.READY
            await sup.stop_machine("vm", force=True)
    finally:
        driver.kill_all()
    record = engine.store.load_record("vm")
    assert record.restored_from is None and ("start", "vm") in driver.calls


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=60)


def test_cli_create_refuses_a_mismatch_and_creates_nothing(home: Path, dirs: StateDir) -> None:
    fabricate(dirs, snapshot=host_snapshot_info())
    out = run(home, "create", "vm", "--template", "web:worker", "--memory", "512")
    assert out.returncode == 1
    # the daemon the command started refused it before creating anything
    started, error = out.stderr.strip().splitlines()
    assert started.startswith("started boxui daemon, pid ")
    assert error.startswith("boxui: vm: snapshot of template web:worker")
    assert "memory_mib 512 requested, snapshot has 256" in error
    assert "vcpus" not in error and "boot args" not in error
    assert json.loads(run(home, "ls", "--json").stdout) == []
    bad = run(home, "create", "vm", "--template", "Web!")
    assert bad.returncode == 2 and "ID:ROLE" in bad.stderr
    nope = run(home, "create", "vm", "--template", "web:nope")
    assert nope.returncode == 1 and "has no role 'nope' (roles: worker)" in nope.stderr
