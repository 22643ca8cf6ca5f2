"""One pool member: restored from its variant's current revision, warmed, or re-adopted.

A member is launched as a machine restore is (the same `BootPlan` and launch spec), with
its files in the pool's directory instead of `machines/`. The restore agent is left
waiting: the claim sends it the claiming machine's name, the host's time and fresh RNG
state, so each is the claimer's, not the pool's. Before a member counts as ready it has
answered one SSH login (`warm_over_ssh`): under TCG that first login is most of a
restore's time, spent translating sshd's code, which the claimer then finds done.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from backend.drivers.base import AdoptRefusal, AdoptRequest, LaunchSpec, VmHandle
from backend.errors import BoxuiError
from backend.guest.machine_seed import load_machine_keys
from backend.pools.members import MemberRecord, MemberStore
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import BootFiles
from backend.supervision.boot_plan import BootPlan
from backend.supervision.ports import pick_free_port, start_on_free_port
from backend.supervision.ssh_access import exec_command
from backend.supervision.supervisor import Supervisor
from backend.templates.machine_from_template import spec_from_template
from backend.templates.restore_plan import RestorePlan, install_snapshot_keys

#: warms a member that answers SSH: (its handle, its directory with its keys)
Warm = Callable[[VmHandle, Path], Awaitable[None]]
WARM_TIMEOUT = 60.0


class PoolError(BoxuiError):
    code = "pool"


@dataclass
class Member:
    record: MemberRecord
    handle: VmHandle
    plan: RestorePlan


async def warm_over_ssh(handle: VmHandle, member_dir: Path) -> None:
    keys = await asyncio.to_thread(load_machine_keys, member_dir)
    sink = Discard()
    status = await exec_command(handle.ssh_port, keys, member_dir, ["true"], sink, sink,
                                timeout=WARM_TIMEOUT, connect_timeout=WARM_TIMEOUT)
    if status != 0:
        raise PoolError(f"{handle.name}: `true` over SSH exited {status}")


class Discard:
    def write(self, data: bytes, /) -> object:
        return len(data)

    def flush(self) -> object:
        return None


def member_plan(sup: Supervisor, member: str, ref: str) -> tuple[MachineSpec, RestorePlan]:
    """The spec a member restores as and its plan; only a memory snapshot of boxui's own
    guest can be pooled (an OS image's clone writes a disk of its own from its start)."""
    spec = spec_from_template(sup.engine.dirs, member, ref)
    plan = sup.restore_plan(spec)
    if plan is None or plan.disk is not None:
        raise PoolError(f"template {ref} is not a memory snapshot of boxui's own guest; "
                        "only those can be kept warm (`boxui template build --snapshot`)")
    return spec, plan


async def launch_member(sup: Supervisor, store: MemberStore, ref: str, warm: Warm,
                        avoid: Callable[[], set[int]]) -> Member:
    """Restore a new member of `ref` and wait until it is warm; on failure nothing of it
    is left (its process killed, its directories removed)."""
    member = store.new_name()
    spec, plan = await asyncio.to_thread(member_plan, sup, member, ref)
    member_dir, run_dir = await asyncio.to_thread(store.make_dirs, member)
    handle: VmHandle | None = None
    try:
        await asyncio.to_thread(install_snapshot_keys, plan, member_dir)
        boot = BootPlan(spec, sup.accel(spec.accel), plan, secrets.token_hex(6),
                        pick_free_port(avoid()), ())
        files = BootFiles(plan.kernel, plan.initrd, "", None)
        record = MemberRecord(member=member, template=ref, revision=plan.revision,
                              memory_mib=spec.memory_mib, ssh_port=boot.ssh_port,
                              boot_id=boot.boot_id, accel=boot.choice.accel,
                              run_dir=str(run_dir))
        await asyncio.to_thread(store.write, record)

        def launch_on(port: int) -> LaunchSpec:
            launch = boot.launch_spec(sup.engine.dirs, files, run_dir, port)
            return replace(launch, machine_dir=member_dir,
                           console_log=member_dir / "console.log")

        handle = await start_on_free_port(sup.driver, launch_on, boot.ssh_port, avoid=avoid)
        record.pid, record.process_start_time = handle.pid, handle.start_time
        record.ssh_port = handle.ssh_port
        await asyncio.to_thread(store.write, record)
        await sup.driver.wait_ready(handle, sup.boot_timeout_of(spec))
        await warm(handle, member_dir)
        record.state = "ready"
        await asyncio.to_thread(store.write, record)
        return Member(record, handle, plan)
    except BaseException:
        if handle is not None:
            await asyncio.shield(end_member_process(sup, handle))
        await asyncio.to_thread(store.remove, member, run_dir)
        raise


async def end_member_process(sup: Supervisor, handle: VmHandle) -> None:
    """Kill a member's hypervisor and let go of it (its pidfd): unlike a machine's, no
    watch is left to release it once it has exited, and a long-running daemon's pool
    churn would pile them up."""
    with contextlib.suppress(BoxuiError, OSError):
        await sup.driver.kill(handle)
    await sup.driver.close(handle)


async def adopt_member(sup: Supervisor, store: MemberStore,
                       record: MemberRecord) -> VmHandle | str:
    """A member a dead daemon left: its process, proven as a machine's is, or why not."""
    if record.pid is None or record.process_start_time is None:
        return "no process recorded"
    result = await sup.driver.adopt(AdoptRequest(
        name=record.member, pid=record.pid, start_time=record.process_start_time,
        ssh_port=record.ssh_port, boot_id=record.boot_id, accel=record.accel,
        run_dir=Path(record.run_dir), console_log=store.member_dir(record.member) /
        "console.log", identity=record.identity()))
    return result.reason if isinstance(result, AdoptRefusal) else result
