"""Keeping each variant's warm pool at its size, and handing members to machines.

One task in the supervisor's group reconciles the pools whenever it is told something
changed: a member claimed, warmed, failed or gone (its pidfd), a size set, a template
rebuilt (`poke`). Nothing polls. Members of a revision that is no longer current are
discarded and replaced; members beyond the memory budget are never started. A member
that fails to start is retried after a back-off (1 s doubling to a minute), and its
error is what `boxui pool ls` shows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from pathlib import Path

from backend.drivers.base import VmHandle
from backend.errors import BoxuiError
from backend.guest.machine_seed import load_machine_keys
from backend.pools.launch import (
    WARM_TIMEOUT,
    Discard,
    Member,
    PoolError,
    Warm,
    adopt_member,
    end_member_process,
    launch_member,
    member_plan,
    warm_over_ssh,
)
from backend.pools.members import MemberRecord, MemberStore
from backend.pools.settings import choose_size, desired_sizes, memory_budget_mib
from backend.pools.views import PoolsReport, report
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir
from backend.supervision.claimed_vm import ClaimedVm
from backend.supervision.ssh_pool import SshPool
from backend.supervision.supervisor import Supervisor
from backend.templates.restore_plan import parse_ref, pick_variant
from backend.templates.revision_store import load_revision
from backend.templates.template_spec import MAX_POOL

log = logging.getLogger("boxui.pools")

MAX_BACKOFF = 60.0


class PoolManager:
    def __init__(self, sup: Supervisor, warm: Warm | None = None,
                 ssh: SshPool | None = None) -> None:
        self.sup = sup
        self.store = MemberStore(sup.engine.dirs)
        #: with `ssh` (the exec path's kept connections) the warm-up's connection stays
        #: open and passes to the claiming machine: its first command skips a handshake
        self.ssh = ssh
        self.warm = warm or (self._warm_kept if ssh is not None else warm_over_ssh)
        #: ready members, by name
        self.members: dict[str, Member] = {}
        #: members starting, by variant, and the memory they will hold
        self._warming: Counter[str] = Counter()
        self._warming_mib: Counter[str] = Counter()
        self._watches: dict[str, asyncio.Task[None]] = {}
        self.problems: dict[str, str] = {}
        self._failures: Counter[str] = Counter()
        self._retry_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._wake.set()
        self._ready_waiters: list[asyncio.Future[Member]] = []

    async def start(self) -> None:
        """Re-adopt what a dead daemon left, then claim and refill from here on."""
        await self.recover()
        self.sup.claim = self.claim
        self.sup.spawn(self._run(), "pools")

    def poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
            except (BoxuiError, OSError) as exc:
                log.warning("warm pools: %s", exc)

    async def _warm_kept(self, handle: VmHandle, member_dir: Path) -> None:
        assert self.ssh is not None
        sink = Discard()
        status = await self.ssh.exec(handle.name, handle.ssh_port, member_dir,
                                     functools.partial(load_machine_keys, member_dir),
                                     ["true"], sink, sink, timeout=WARM_TIMEOUT)
        if status != 0:
            raise PoolError(f"{handle.name}: `true` over SSH exited {status}")

    # --- claiming --------------------------------------------------------------------

    async def claim(self, spec: MachineSpec) -> ClaimedVm | None:
        """A ready member restored exactly as `spec` would be, taken out of its pool."""
        if spec.template is None or spec.mounts or spec.image is not None or \
                not any(m.record.template == spec.template for m in self.members.values()):
            return None
        try:  # the same checks as a restore: a spec its snapshot cannot serve boots as usual
            plan = await asyncio.to_thread(self.sup.restore_plan, spec)
        except BoxuiError:
            return None
        chosen = next((m for m in self.members.values()
                       if plan is not None and m.plan.label == plan.label
                       and m.record.accel == self.sup.accel(spec.accel).accel), None)
        if chosen is None:
            return None
        name = chosen.record.member
        del self.members[name]
        self._stop_watching(name)
        chosen.record.state, chosen.record.claimed_by = "claimed", spec.name
        await asyncio.to_thread(self.store.write, chosen.record)
        if self.ssh is not None:
            self.ssh.rename(name, spec.name)
        return ClaimedVm(name, chosen.handle, self.store.member_dir(name),
                         Path(chosen.record.run_dir), chosen.plan, settled=self.poke)

    async def set_size(self, ref: str, size: int) -> str:
        """Keep `size` members of `ref` (`ID` alone for a template of one role); returns
        the variant as `ID:ROLE`. Refused, changing nothing, for a variant that cannot
        be pooled; 0 is always accepted (it empties the pool)."""
        if not 0 <= size <= MAX_POOL:
            raise PoolError(f"a pool keeps 0 to {MAX_POOL} members, not {size}")
        dirs = self.sup.engine.dirs
        template_id, role = parse_ref(ref)
        revision = await asyncio.to_thread(load_revision, dirs, template_id)
        full = f"{template_id}:{pick_variant(revision, role).role}"
        if size:
            await asyncio.to_thread(member_plan, self.sup, "pool-check", full)
        await asyncio.to_thread(choose_size, dirs, full, size)
        self._retry_at.pop(full, None)
        self.poke()
        return full

    # --- keeping the pools full ------------------------------------------------------

    async def reconcile(self) -> None:
        dirs = self.sup.engine.dirs
        wanted = await asyncio.to_thread(desired_sizes, dirs)
        budget = await asyncio.to_thread(memory_budget_mib, dirs)
        refs = set(wanted) | {m.record.template for m in self.members.values()}
        current = await asyncio.to_thread(_current, dirs, refs)
        for member in list(self.members.values()):
            if current.get(member.record.template, (None, 0))[0] != member.record.revision:
                await self._discard(member, "its template's revision moved")
        for ref in refs:
            mine = sorted((m for m in self.members.values() if m.record.template == ref),
                          key=lambda m: m.record.created_at)
            extra = len(mine) + self._warming[ref] - wanted.get(ref, (0, ""))[0]
            for member in mine[len(mine) - max(0, min(extra, len(mine))):]:
                await self._discard(member, "more than its pool's size")
        used = self.memory_used_mib()
        for ref, (size, _source) in sorted(wanted.items()):
            revision, memory = current.get(ref, (None, 0))
            if revision is None or time.monotonic() < self._retry_at.get(ref, 0.0):
                continue
            have = self._warming[ref] + sum(m.record.template == ref
                                            for m in self.members.values())
            if have < size and used + memory > budget:
                self.problems[ref] = (f"memory budget reached: {used} of {budget} MiB held "
                                      "by warm pools ([pools] memory_budget_mib)")
            elif self.problems.get(ref, "").startswith("memory budget"):
                del self.problems[ref]
            while have < size and used + memory <= budget:
                self._warming[ref] += 1
                self._warming_mib[ref] += memory
                used, have = used + memory, have + 1
                self.sup.spawn(self._fill(ref, memory), f"pool-fill-{ref}")

    async def _fill(self, ref: str, memory: int) -> None:
        try:
            member = await launch_member(self.sup, self.store, ref, self.warm, self._ports)
        except (BoxuiError, OSError) as exc:
            self._failed(ref, str(exc))
            return
        finally:
            self._warming[ref] -= 1
            self._warming_mib[ref] -= memory
        self.problems.pop(ref, None)
        self._failures.pop(ref, None)
        self._adopted(member)
        log.info("warm pool %s: member %s ready", ref, member.record.member)
        self.poke()

    def _failed(self, ref: str, problem: str) -> None:
        self.problems[ref] = problem
        self._failures[ref] += 1
        delay = min(MAX_BACKOFF, 2.0 ** (self._failures[ref] - 1))
        self._retry_at[ref] = time.monotonic() + delay
        log.warning("warm pool %s: a member failed (retry in %.0f s): %s", ref, delay, problem)

        async def retry() -> None:
            await asyncio.sleep(delay)
            self.poke()

        self.sup.spawn(retry(), f"pool-retry-{ref}")

    def _ports(self) -> set[int]:
        held = {h.ssh_port for h in self.sup.handles.values()}
        return held | {m.handle.ssh_port for m in self.members.values()}

    def _adopted(self, member: Member) -> None:
        name = member.record.member
        self.members[name] = member
        self._watches[name] = self.sup.spawn(self._watch(member), f"pool-watch-{name}")
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(member)

    async def next_ready(self) -> Member:
        """The next member to join `members` (warmed, or re-adopted): for what waits for
        a pool to fill (a benchmark, a test), which is told rather than polling."""
        waiter: asyncio.Future[Member] = asyncio.get_running_loop().create_future()
        self._ready_waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in self._ready_waiters:
                self._ready_waiters.remove(waiter)

    async def _watch(self, member: Member) -> None:
        """A member whose guest dies is dropped, and the pool refilled."""
        info = await self.sup.driver.wait_exit(member.handle)
        name = member.record.member
        if self.members.get(name) is not member:
            return
        del self.members[name]
        self._watches.pop(name, None)
        self._forget_connection(name)
        await asyncio.to_thread(self.store.remove, name, Path(member.record.run_dir))
        log.warning("warm pool %s: member %s exited: %s", member.record.template, name,
                    info.detail)
        self.poke()

    def _forget_connection(self, name: str) -> None:
        if self.ssh is not None:
            self.ssh.forget(name)

    def _stop_watching(self, name: str) -> None:
        task = self._watches.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _discard(self, member: Member, why: str) -> None:
        name = member.record.member
        self.members.pop(name, None)
        self._stop_watching(name)
        self._forget_connection(name)
        await end_member_process(self.sup, member.handle)  # its watch is cancelled above
        await asyncio.to_thread(self.store.remove, name, Path(member.record.run_dir))
        log.info("warm pool %s: member %s discarded: %s", member.record.template, name, why)

    @property
    def starting(self) -> int:
        """Members being restored or warmed now."""
        return sum(self._warming.values())

    def memory_used_mib(self) -> int:
        return sum(self._warming_mib.values()) + sum(m.record.memory_mib
                                                     for m in self.members.values())

    def report(self) -> PoolsReport:
        records = [m.record for m in self.members.values()]
        return report(self.sup.engine.dirs, records, dict(self._warming), self.problems,
                      dict(self._warming_mib))

    # --- after a crash ---------------------------------------------------------------

    async def recover(self) -> None:
        """Ready members are re-adopted (if their revision is still current); a member
        caught warming or being claimed when the daemon died is killed, unless its claim
        was recorded by its machine, which then owns it."""
        for record in await asyncio.to_thread(self.store.records):
            if isinstance(record, str):  # unreadable: no process can be proven
                await asyncio.to_thread(self.store.remove, record)
                continue
            await self._recover_one(record)

    async def _recover_one(self, record: MemberRecord) -> None:
        name, run_dir = record.member, Path(record.run_dir)
        if record.state == "claimed" and self._claim_recorded(record):
            await asyncio.to_thread(self.store.remove, name, run_dir)
            return
        handle = await adopt_member(self.sup, self.store, record)
        why = handle if isinstance(handle, str) else None
        if why is None and record.state != "ready":
            why = f"it was {record.state} when the daemon died"
        if why is None:
            try:
                _spec, plan = await asyncio.to_thread(member_plan, self.sup, name,
                                                      record.template)
                if plan.revision != record.revision:
                    why = "its template's revision moved"
            except BoxuiError as exc:
                why = str(exc)
        if why is not None:
            if not isinstance(handle, str):
                await end_member_process(self.sup, handle)
            await asyncio.to_thread(self.store.remove, name, run_dir)
            log.info("warm pool %s: member %s discarded: %s", record.template, name, why)
            return
        if not isinstance(handle, str):
            member = Member(record, handle, plan)
            self._adopted(member)
            if self.ssh is not None:  # this daemon keeps no connection to it yet
                self.sup.spawn(self._rewarm(member), f"pool-rewarm-{name}")

    async def _rewarm(self, member: Member) -> None:
        try:
            await self.warm(member.handle, self.store.member_dir(member.record.member))
        except (BoxuiError, OSError) as exc:
            log.info("warm pool %s: member %s does not answer SSH (%s)",
                     member.record.template, member.record.member, exc)

    def _claim_recorded(self, record: MemberRecord) -> bool:
        if record.claimed_by is None:
            return False
        try:
            machine = self.sup.engine.store.load_record(record.claimed_by)
        except BoxuiError:
            return False
        return machine.launched_as == record.member and machine.pid == record.pid


def _current(dirs: StateDir, refs: set[str]) -> dict[str, tuple[str | None, int]]:
    """Each variant's current revision and memory (None: no such template or role)."""
    found: dict[str, tuple[str | None, int]] = {}
    for ref in refs:
        template_id, role = parse_ref(ref)
        try:
            revision = load_revision(dirs, template_id)
            found[ref] = (revision.revision, pick_variant(revision, role).memory_mib)
        except (BoxuiError, OSError):
            found[ref] = (None, 0)
    return found


__all__ = ["PoolError", "PoolManager"]
