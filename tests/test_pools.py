"""Warm pools on the stand-in driver: claim, refill, budget, a revision that moved, and
recovery after the supervisor dies."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
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
from backend.supervision.host_checks import check_orphans
from backend.supervision.orphan_gc import collect_orphans, list_orphans
from backend.supervision.orphans import scan
from backend.supervision.supervisor import MachineBusyError, Supervisor
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


@dataclass
class Pool:
    sup: Supervisor
    manager: PoolManager
    warmed: Warmed

    def ready(self, ref: str = REF) -> list[str]:
        return sorted(n for n, m in self.manager.members.items() if m.record.template == ref)

    async def until_ready(self, count: int, what: str) -> None:
        """As a benchmark waits for a pool to fill: told by each member that is ready."""
        async with asyncio.timeout(15):
            while len(self.ready()) < count:
                await self.manager.next_ready()
        assert len(self.ready()) == count, what


@asynccontextmanager
async def pools(engine: Engine, driver: SnapshotDriver, *, recover: bool = False
                ) -> AsyncIterator[Pool]:
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=lambda _r: TCG)
    warmed = Warmed()
    async with sup.running(recover=recover_machines if recover else None):
        manager = PoolManager(sup, warm=warmed)
        await manager.start()
        yield Pool(sup, manager, warmed)


async def until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


OpenPool = Callable[..., AbstractAsyncContextManager[Pool]]


async def claim_then_refill(engine: Engine, pool: Pool) -> tuple[dict[str, int], int | None]:
    """Machine api1 started from a full pool of two, which fills again: the members'
    pids by name, and the claimed member's pid, which api1 runs on."""
    await engine.create_machine(spec_from_template(engine.dirs, "api1", REF))
    await pool.sup.start_machine("api1")
    await pool.until_ready(2, "refilled")
    members = {n: m.handle.pid for n, m in pool.manager.members.items()}
    return members, engine.store.load_record("api1").pid


@pytest.fixture
async def snap_driver() -> AsyncIterator[SnapshotDriver]:
    driver = SnapshotDriver()
    yield driver
    driver.kill_all()


@pytest.fixture
def warm_pool(engine: Engine, snap_driver: SnapshotDriver) -> OpenPool:
    """A snapshot template `web:worker`; opening the pool (a supervisor and its pool
    manager) with `size` sets that pool's size and waits until `ready` (the size unless
    given) members are warm."""
    fabricate(engine.dirs, snapshot=snapshot_info())

    @asynccontextmanager
    async def open_pool(size: int = 0, *, ready: int | None = None,
                        recover: bool = False) -> AsyncIterator[Pool]:
        if size:
            choose_size(engine.dirs, REF, size)
        async with pools(engine, snap_driver, recover=recover) as pool:
            want = size if ready is None else ready
            if want:
                await pool.until_ready(want, f"{want} members warm")
            yield pool

    return open_pool


async def test_a_claim_takes_a_warm_member_and_the_pool_refills(
        engine: Engine, snap_driver: SnapshotDriver, warm_pool: OpenPool) -> None:
    async with warm_pool(2) as pool:
        sup, manager = pool.sup, pool.manager
        assert sorted(pool.warmed.names) == pool.ready(), "each warmed before it counts"
        assert not engine.projection.names(), "members are not machines"
        members = pool.ready()
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
        await until(lambda: len(pool.ready()) == 2 and record.launched_as
                    not in pool.ready(), "the pool refilled")
        await sup.stop_machine("api1")
        assert engine.projection.state_of("api1") is InstanceState.STOPPED
        assert record.pid not in snap_driver.alive()


async def test_a_spec_the_snapshot_cannot_serve_is_not_claimed(
        engine: Engine, warm_pool: OpenPool) -> None:
    async with warm_pool(1) as pool:
        odd = spec_from_template(engine.dirs, "odd", REF, memory_mib=512)
        await engine.create_machine(odd)
        with pytest.raises(Exception, match="memory_mib 512"):
            await pool.sup.start_machine("odd")
        assert len(pool.ready()) == 1, "the member stays in its pool"


async def test_members_stay_within_the_memory_budget(
        engine: Engine, warm_pool: OpenPool) -> None:
    (engine.dirs.root / "daemon.toml").write_text("[pools]\nmemory_budget_mib = 600\n")
    async with warm_pool(3, ready=2) as pool:  # two fit in 600 MiB
        await asyncio.sleep(0.3)
        assert len(pool.ready()) == 2, "a third would pass the budget"
        (view,) = pool.manager.report().pools
        assert (view.size, view.ready, view.memory_mib) == (3, 2, 512)
        assert view.problem is not None and "memory budget" in view.problem


async def test_members_of_a_revision_that_moved_are_replaced(
        engine: Engine, snap_driver: SnapshotDriver, warm_pool: OpenPool) -> None:
    async with warm_pool(1) as pool:
        manager = pool.manager
        (old,) = pool.ready()
        old_pid = manager.members[old].handle.pid
        fabricate(engine.dirs, snapshot=snapshot_info(), revision="fedcba9876543210")
        manager.poke()  # as a finished template build does
        await until(lambda: pool.ready() not in ([], [old]), "a member of the new revision")
        (new,) = pool.ready()
        assert manager.members[new].record.revision == "fedcba9876543210"
        await until(lambda: old_pid not in snap_driver.alive(), "the old member killed")
        assert not manager.store.member_dir(old).exists()


async def test_a_member_that_dies_is_replaced(warm_pool: OpenPool) -> None:
    async with warm_pool(1) as pool:
        (old,) = pool.ready()
        os.kill(pool.manager.members[old].handle.pid, signal.SIGKILL)
        await until(lambda: len(pool.ready()) == 1 and pool.ready() != [old],
                    "a new member in its place")
        assert not pool.manager.store.member_dir(old).exists()


async def test_setting_a_pool_to_zero_empties_it(
        snap_driver: SnapshotDriver, warm_pool: OpenPool) -> None:
    async with warm_pool() as pool:
        manager = pool.manager
        assert await manager.set_size("web", 2) == REF
        await pool.until_ready(2, "two members warm")
        pids = [m.handle.pid for m in manager.members.values()]
        await manager.set_size(REF, 0)
        await until(lambda: not manager.members, "the pool emptied")
        await until(lambda: not set(pids) & set(snap_driver.alive()), "its members killed")


async def test_each_member_that_becomes_ready_is_told(warm_pool: OpenPool) -> None:
    async with warm_pool() as pool:
        told = asyncio.ensure_future(pool.manager.next_ready())
        await pool.manager.set_size(REF, 1)
        async with asyncio.timeout(15):
            member = await told
        assert pool.ready() == [member.record.member]
        assert pool.warmed.names == [member.record.member], "told once it was warm"


async def test_an_image_template_cannot_be_pooled(
        engine: Engine, snap_driver: SnapshotDriver) -> None:
    fabricate(engine.dirs)  # an image template: nothing to restore
    async with pools(engine, snap_driver) as pool:
        with pytest.raises(Exception, match="not a memory snapshot"):
            await pool.manager.set_size(REF, 1)


async def test_members_and_claimed_machines_are_readopted_after_a_crash(
        engine: Engine, snap_driver: SnapshotDriver, warm_pool: OpenPool) -> None:
    async with warm_pool(2) as pool:
        members, claimed_pid = await claim_then_refill(engine, pool)
    # the supervisor is gone (as if killed): every process lives on
    assert set(members.values()) | {claimed_pid} <= set(snap_driver.alive())
    # a claim cut short before its machine recorded it: that member is not kept
    store = pool.manager.store
    cut = MemberRecord.model_validate_json(
        (store.member_dir(sorted(members)[0]) / "member.json").read_bytes())
    cut.state, cut.claimed_by = "claimed", "ghost"
    store.write(cut)
    async with warm_pool(recover=True) as pool:
        assert pool.sup.handles["api1"].pid == claimed_pid, "the claimed machine re-adopted"
        assert engine.projection.state_of("api1") is InstanceState.READY
        kept = sorted(members)[1]
        assert pool.manager.members[kept].handle.pid == members[kept], "a member re-adopted"
        await until(lambda: cut.pid not in snap_driver.alive(), "the cut claim's killed")
        await pool.until_ready(2, "refilled to two")
        await pool.sup.stop_machine("api1")
        assert claimed_pid not in snap_driver.alive()


async def test_gc_and_the_doctor_tell_pool_members_from_orphans(
        engine: Engine, snap_driver: SnapshotDriver, warm_pool: OpenPool) -> None:
    """Members and a machine that claimed one are held (their QMP sockets are not where
    a machine's are, yet the scan finds them); a member no record holds is an orphan,
    which `boxui gc` kills and the doctor names."""
    async with warm_pool(2) as pool:
        members, claimed_pid = await claim_then_refill(engine, pool)
        found = {p.pid: p for p in scan(engine.dirs)}
        assert set(found) == {*members.values(), claimed_pid}
        assert all(p.member for p in found.values())
        assert await list_orphans(pool.sup) == []
        assert check_orphans(engine.dirs.root).status == "ok"

        lost, kept = sorted(members)
        shutil.rmtree(pool.manager.store.member_dir(lost))  # its pool forgot it
        reason = f"no warm pool member {lost}, and no machine claimed it"
        orphans = await list_orphans(pool.sup)
        assert [(o.process.pid, o.reason) for o in orphans] == [(members[lost], reason)]
        doctor = check_orphans(engine.dirs.root)
        assert doctor.status == "warn" and f"pid {members[lost]} ({reason})" in doctor.detail
        done = await collect_orphans(pool.sup, dry_run=False)
        assert [(d["pid"], d["action"][:6]) for d in done] == [(members[lost], "killed")]
        await until(lambda: members[lost] not in snap_driver.alive(), "the orphan gone")
        assert {members[kept], claimed_pid} <= set(snap_driver.alive())


async def test_a_claimed_members_qemu_left_behind_is_the_machines_leftover(
        engine: Engine, snap_driver: SnapshotDriver, warm_pool: OpenPool) -> None:
    """A claimed QEMU still carries the member's name; once its machine no longer holds
    it (recorded crashed, the process alive), stop, rm and gc must still know it as that
    machine's: stop kills it, rm refuses without --force, gc says whose it was."""
    async with warm_pool(1) as pool:
        await engine.create_machine(spec_from_template(engine.dirs, "api1", REF))
        await pool.sup.start_machine("api1")
        record = engine.store.load_record("api1")
        claimed_pid, member = record.pid, record.launched_as
    assert claimed_pid in snap_driver.alive() and member is not None
    sup = Supervisor(engine, snap_driver, FakeBootFiles(), accel_for=lambda _r: TCG)
    async with sup.running(recover=None):  # as after a recovery that could not adopt it
        await sup.machine_crashed("api1", "its QMP did not answer")
        assert await sup.leftovers("api1") == [claimed_pid]
        with pytest.raises(MachineBusyError, match=f"pid {claimed_pid}"):
            await sup.delete_machine("api1")
        [orphan] = [o for o in await list_orphans(sup) if o.process.pid == claimed_pid]
        assert orphan.reason == f"warm pool member {member}, claimed: api1 is crashed"
        await sup.stop_machine("api1")
        await until(lambda: claimed_pid not in snap_driver.alive(), "the leftover killed")
        assert await sup.leftovers("api1") == []
