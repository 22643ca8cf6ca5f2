"""Warm pools on the stand-in driver: claim, refill, budget, a revision that moved, and
recovery after the supervisor dies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from backend.drivers.base import VmHandle
from backend.pools.manager import PoolManager
from backend.pools.members import MemberRecord
from backend.pools.settings import choose_size
from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from backend.templates.machine_from_template import spec_from_template
from tests.fake_driver import FakeBootFiles
from tests.templates.helpers import TCG, SnapshotDriver, fabricate, snapshot_info

REF = "web:worker"


class Warmed:
    """The warm-up the pool asks for, recorded (a stand-in has no SSH)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def __call__(self, handle: VmHandle, member_dir: Path) -> None:
        assert (member_dir / "id_ed25519").is_file(), "the snapshot's keys are installed"
        self.names.append(handle.name)


@asynccontextmanager
async def pools(engine: Engine, driver: SnapshotDriver, *, recover: bool = False
                ) -> AsyncIterator[tuple[Supervisor, PoolManager, Warmed]]:
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=lambda _r: TCG)
    warmed = Warmed()
    async with sup.running(recover=recover_machines if recover else None):
        manager = PoolManager(sup, warm=warmed)
        await manager.start()
        yield sup, manager, warmed


async def until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def ready(manager: PoolManager, ref: str = REF) -> list[str]:
    return sorted(n for n, m in manager.members.items() if m.record.template == ref)


@pytest.fixture
async def snap_driver() -> AsyncIterator[SnapshotDriver]:
    driver = SnapshotDriver()
    yield driver
    driver.kill_all()


async def test_a_claim_takes_a_warm_member_and_the_pool_refills(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    choose_size(engine.dirs, REF, 2)
    async with pools(engine, snap_driver) as (sup, manager, warmed):
        await until(lambda: len(ready(manager)) == 2, "two members warm")
        assert sorted(warmed.names) == ready(manager), "each warmed before it counts"
        assert not engine.projection.names(), "members are not machines"
        members = ready(manager)
        pids = {manager.members[m].handle.pid for m in members}
        await engine.create_machine(spec_from_template(engine.dirs, "api1", REF))
        await sup.start_machine("api1")
        record = engine.store.load_record("api1")
        assert record.launched_as in members and record.pid in pids
        assert engine.projection.state_of("api1") is InstanceState.READY
        assert snap_driver.starts.get("api1") is None, "claimed, not restored anew"
        machine_dir = engine.dirs.machine_dir("api1")
        assert (machine_dir / "id_ed25519").read_bytes() == b"x", "the snapshot's key moved in"
        assert (engine.dirs.machine_run_dir("api1")).is_dir()
        messages = [e.data.get("message", "") for e in read_log(engine.dirs.event_log).events
                    if e.subject == "api1"]
        assert any("claimed warm pool member" in m for m in messages), messages
        assert not (manager.store.member_dir(record.launched_as or "")).exists()
        await until(lambda: len(ready(manager)) == 2 and record.launched_as
                    not in ready(manager), "the pool refilled")
        await sup.stop_machine("api1")
        assert engine.projection.state_of("api1") is InstanceState.STOPPED
        assert record.pid not in snap_driver.alive()


async def test_a_spec_the_snapshot_cannot_serve_is_not_claimed(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    choose_size(engine.dirs, REF, 1)
    async with pools(engine, snap_driver) as (sup, manager, _warmed):
        await until(lambda: len(ready(manager)) == 1, "one member warm")
        odd = spec_from_template(engine.dirs, "odd", REF, memory_mib=512)
        await engine.create_machine(odd)
        with pytest.raises(Exception, match="memory_mib 512"):
            await sup.start_machine("odd")
        assert len(ready(manager)) == 1, "the member stays in its pool"


async def test_members_stay_within_the_memory_budget(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    (engine.dirs.root / "daemon.toml").write_text("[pools]\nmemory_budget_mib = 600\n")
    choose_size(engine.dirs, REF, 3)
    async with pools(engine, snap_driver) as (_sup, manager, _warmed):
        await until(lambda: len(ready(manager)) == 2, "two members fit in 600 MiB")
        await asyncio.sleep(0.3)
        assert len(ready(manager)) == 2, "a third would pass the budget"
        (view,) = manager.report().pools
        assert (view.size, view.ready, view.memory_mib) == (3, 2, 512)
        assert view.problem is not None and "memory budget" in view.problem


async def test_members_of_a_revision_that_moved_are_replaced(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    choose_size(engine.dirs, REF, 1)
    async with pools(engine, snap_driver) as (_sup, manager, _warmed):
        await until(lambda: len(ready(manager)) == 1, "one member warm")
        (old,) = ready(manager)
        old_pid = manager.members[old].handle.pid
        fabricate(engine.dirs, snapshot=snapshot_info(), revision="fedcba9876543210")
        manager.poke()  # as a finished template build does
        await until(lambda: ready(manager) not in ([], [old]), "a member of the new revision")
        (new,) = ready(manager)
        assert manager.members[new].record.revision == "fedcba9876543210"
        await until(lambda: old_pid not in snap_driver.alive(), "the old member killed")
        assert not manager.store.member_dir(old).exists()


async def test_a_member_that_dies_is_replaced(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    choose_size(engine.dirs, REF, 1)
    async with pools(engine, snap_driver) as (_sup, manager, _warmed):
        await until(lambda: len(ready(manager)) == 1, "one member warm")
        (old,) = ready(manager)
        os.kill(manager.members[old].handle.pid, signal.SIGKILL)
        await until(lambda: len(ready(manager)) == 1 and ready(manager) != [old],
                    "a new member in its place")
        assert not manager.store.member_dir(old).exists()


async def test_setting_a_pool_to_zero_empties_it(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    async with pools(engine, snap_driver) as (_sup, manager, _warmed):
        assert await manager.set_size("web", 2) == REF
        await until(lambda: len(ready(manager)) == 2, "two members warm")
        pids = [m.handle.pid for m in manager.members.values()]
        await manager.set_size(REF, 0)
        await until(lambda: not manager.members, "the pool emptied")
        await until(lambda: not set(pids) & set(snap_driver.alive()), "its members killed")


async def test_an_image_template_cannot_be_pooled(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs)  # an image template: nothing to restore
    async with pools(engine, snap_driver) as (_sup, manager, _warmed):
        with pytest.raises(Exception, match="not a memory snapshot"):
            await manager.set_size(REF, 1)


async def test_members_and_claimed_machines_are_readopted_after_a_crash(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    choose_size(engine.dirs, REF, 2)
    async with pools(engine, snap_driver) as (sup, manager, _warmed):
        await until(lambda: len(ready(manager)) == 2, "two members warm")
        await engine.create_machine(spec_from_template(engine.dirs, "api1", REF))
        await sup.start_machine("api1")
        await until(lambda: len(ready(manager)) == 2, "refilled")
        members = {n: m.handle.pid for n, m in manager.members.items()}
        claimed_pid = engine.store.load_record("api1").pid
    # the supervisor is gone (as if killed): every process lives on
    assert set(members.values()) | {claimed_pid} <= set(snap_driver.alive())
    # a claim cut short before its machine recorded it: that member is not kept
    cut = MemberRecord.model_validate_json(
        (manager.store.member_dir(sorted(members)[0]) / "member.json").read_bytes())
    cut.state, cut.claimed_by = "claimed", "ghost"
    manager.store.write(cut)
    async with pools(engine, snap_driver, recover=True) as (sup, manager, _warmed):
        assert sup.handles["api1"].pid == claimed_pid, "the claimed machine re-adopted"
        assert engine.projection.state_of("api1") is InstanceState.READY
        kept = sorted(members)[1]
        assert manager.members[kept].handle.pid == members[kept], "a member re-adopted"
        await until(lambda: cut.pid not in snap_driver.alive(), "the cut claim's killed")
        await until(lambda: len(ready(manager)) == 2, "refilled to two")
        await sup.stop_machine("api1")
        assert claimed_pid not in snap_driver.alive()
