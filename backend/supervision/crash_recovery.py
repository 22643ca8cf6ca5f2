"""Recover machines after boxui itself crashed (or was simply closed).

For every machine recorded as running, the new supervisor re-adopts the hypervisor only
when it is provably the same process: the pid is alive, its start time equals the one
recorded, its command line names this machine and this state dir, and QMP answers.
Anything else marks the machine crashed with the reason, and its restart policy applies.
A process that merely reuses the pid is never signalled, and no machine is started twice:
recovery runs before any start, and a start of an adopted machine finds it active.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psutil

from backend.drivers.base import AdoptRefusal, AdoptRequest, VmHandle
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.runtime_record import RuntimeRecord

if TYPE_CHECKING:
    from backend.supervision.supervisor import Supervisor

GONE = "process gone while boxui was down"
#: how long a hypervisor found mid-start may take to name its daemon in its pidfile
ORPHAN_SETTLE_SECONDS = 10.0


async def recover_machines(supervisor: Supervisor) -> None:
    engine = supervisor.engine
    machines = await asyncio.to_thread(engine.machines)
    for machine in machines:
        record = machine.record
        if machine.broken or record is None or record.persisted is not PersistedState.RUNNING:
            continue
        state = engine.projection.state_of(machine.name)
        if state is None:
            continue
        await recover_one(supervisor, machine.name, record, state)


async def recover_one(
    supervisor: Supervisor, name: str, record: RuntimeRecord, state: InstanceState
) -> None:
    engine = supervisor.engine
    dirs = engine.dirs
    run_dir = dirs.machine_run_dir(name)
    pid, started = record.pid, record.process_start_time
    if pid is None or started is None:
        # boxui died between launching QEMU and recording its pid: look for it by identity
        found = await asyncio.to_thread(_find_orphan, name, run_dir)
        if found is None:
            await supervisor.machine_crashed(name, GONE)
            return
        pid, started = found
    result = await supervisor.driver.adopt(AdoptRequest(
        name=name, pid=pid, start_time=started, ssh_port=record.ssh_port or 0,
        boot_id=record.boot_id or "", accel=record.accel or "tcg", run_dir=run_dir,
        console_log=dirs.console_log(name),
    ))
    if isinstance(result, AdoptRefusal):
        await supervisor.machine_crashed(name, result.reason)
        return
    await _adopted(supervisor, name, result, state)


async def _adopted(
    supervisor: Supervisor, name: str, handle: VmHandle, state: InstanceState
) -> None:
    engine = supervisor.engine
    supervisor.handles[name] = handle

    def identity(record: RuntimeRecord) -> None:
        record.pid, record.process_start_time = handle.pid, handle.start_time

    await engine.update_record(name, identity)
    supervisor.spawn(supervisor._watch(name, handle), f"watch-{name}")
    if state is InstanceState.BOOTING:
        # it was still booting when boxui died: finish waiting for it in the background
        supervisor._booting.add(name)  # now, so a stop before the task runs aborts it
        supervisor.spawn(_finish_boot(supervisor, name, handle), f"boot-{name}")
        return
    await engine.transition(name, Verb.ADOPTED, message=f"re-adopted running pid {handle.pid}")
    supervisor.tracker(name).machine_up()


async def _finish_boot(supervisor: Supervisor, name: str, handle: VmHandle) -> None:
    """Wait for a re-adopted guest that was still booting, exactly as a boot started
    here would: under the machine's lock and marked as booting, so a stop meanwhile
    aborts the boot instead of racing it."""
    from backend.errors import BoxuiError

    async with supervisor._locks[name]:
        if supervisor.handles.get(name) is not handle:
            supervisor._booting.discard(name)  # stopped (or deleted) before we got here
            supervisor._aborting.discard(name)
            return
        try:
            await supervisor.driver.wait_ready(handle, supervisor.boot_timeout)
        except (BoxuiError, OSError) as exc:
            if supervisor.handles.get(name) is handle:  # else its exit was handled already
                await supervisor._boot_failed(name, handle, exc)
            supervisor._aborting.discard(name)
            return
        finally:
            supervisor._booting.discard(name)
        await supervisor.engine.transition(name, Verb.READY,
                                           message=f"re-adopted pid {handle.pid}; ready")
        supervisor.tracker(name).machine_up()


def _find_orphan(name: str, run_dir: object) -> tuple[int, float] | None:
    """The hypervisor of `name` that nobody recorded, found by its identity arguments.

    A QEMU caught mid-start is still daemonizing: the process boxui launched and the
    daemon it forks carry the same command line for a moment, and the launcher then
    exits. Adopting it would leave the real VM running unseen, so when the command line
    has a `-pidfile`, only the process that file names counts (the daemon writes it
    before the launcher exits); it is waited for briefly.
    """
    from pathlib import Path

    from backend.drivers.qemu.driver import identity_args

    wanted = identity_args(name, Path(str(run_dir)))
    deadline = time.monotonic() + ORPHAN_SETTLE_SECONDS
    while True:
        matches: dict[int, tuple[list[str], float]] = {}
        for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.info.get("status") != psutil.STATUS_ZOMBIE and \
                    all(arg in cmdline for arg in wanted):
                matches[proc.pid] = (cmdline, float(proc.info["create_time"]))
        pidfiles = {_after(cmdline, "-pidfile") for cmdline, _ in matches.values()} - {None}
        if matches and not pidfiles:
            pid = min(matches)
            return pid, matches[pid][1]
        for pidfile in pidfiles:
            named = _read_pid(Path(str(pidfile)))
            if named in matches:
                return named, matches[named][1]
        if not matches or time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _after(argv: list[str], option: str) -> str | None:
    try:
        return argv[argv.index(option) + 1]
    except (ValueError, IndexError):
        return None


def _read_pid(path: object) -> int | None:
    from pathlib import Path

    try:
        return int(Path(str(path)).read_text().strip())
    except (OSError, ValueError):
        return None
