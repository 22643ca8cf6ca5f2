"""Recover machines after boxui itself crashed (or was simply closed).

For every machine recorded as running, the new supervisor re-adopts the hypervisor only
when it is provably the same process: the pid is alive, its start time equals the one
recorded, and its command line names this machine and this state dir. A proven process
whose QMP does not answer (a hung or SIGSTOPped QEMU) is ours all the same: it is adopted
as `unresponsive`, so that stop and rm can kill it and its restart policy applies
(leaving it running unadopted would orphan it). Anything else marks the machine crashed
with the reason, and its restart policy applies. What was in progress is finished: a
boot goes on to ready (or failed), a stop to stopped. A process that merely reuses the
pid is never signalled, and no machine is started twice: recovery runs before any start
(`supervisor.running(recover=recover_machines)` runs it before it yields), and a start
of an adopted machine finds it active.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from backend.drivers.base import AdoptRefusal, AdoptRequest
from backend.drivers.qemu.driver import identity_args
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, PersistedState
from backend.state.machine_store import MachineStore
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.heartbeat import qmp_problem
from backend.supervision.interruptions import HEARTBEAT_STATES
from backend.supervision.supervisor import Supervisor

GONE = "process gone while boxui was down"
#: how long a hypervisor found mid-start may take to name its daemon in its pidfile
ORPHAN_SETTLE_SECONDS = 10.0
#: how long an adopted hypervisor's QMP gets to answer before it counts as unresponsive
QMP_ANSWER_SECONDS = 2.0


async def recover_machines(supervisor: Supervisor) -> None:
    """Recover every machine recorded as running, all at once: a daemon serves nothing
    until this is done, and each adoption mostly waits on its hypervisor's answer."""
    engine = supervisor.engine
    # the log says which machines may run (state.json agrees with it once the engine is
    # open): only their records are read, not every machine's
    active = [name for name in engine.projection.names()
              if engine.projection.state_of(name) in ACTIVE_STATES]
    records = await asyncio.to_thread(_running_records, engine.store, active)
    results = await asyncio.gather(
        *(recover_one(supervisor, name, record, state) for name, record, state in
          ((n, r, engine.projection.state_of(n)) for n, r in records.items())
          if state is not None),
        return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _running_records(store: MachineStore, names: list[str]) -> dict[str, RuntimeRecord]:
    records = {}
    for name in names:
        try:
            record = store.load_record(name)
        except BoxuiError:
            continue  # unreadable or gone: the engine reported it as broken already
        if record.persisted is PersistedState.RUNNING:
            records[name] = record
    return records


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
        console_log=dirs.console_log(name), identity=_claimed_identity(record),
    ))
    if isinstance(result, AdoptRefusal):
        await supervisor.machine_crashed(name, result.reason)
    elif state is InstanceState.BOOTING:
        await supervisor.adopt_booting(name, result)
    elif state is InstanceState.STOPPING and not await _is_service_instance(engine, name):
        await supervisor.adopt_stopping(name, result)
    elif state in HEARTBEAT_STATES and \
            (problem := await qmp_problem(supervisor.driver, result, QMP_ANSWER_SECONDS)):
        await supervisor.adopt_unresponsive(name, result, problem)
    else:
        await supervisor.adopt_running(name, result)


async def _is_service_instance(engine: Engine, name: str) -> bool:
    """A service instance's stop is one step of its service's scale-down (drain, stop,
    delete): its service reconciles it, so recovery adopts it as running rather than
    finishing a stop whose delete would never follow."""
    try:
        spec = await asyncio.to_thread(engine.store.load_spec, name)
    except BoxuiError:
        return False
    return spec.service is not None


def _claimed_identity(record: RuntimeRecord) -> tuple[str, ...] | None:
    """A claimed warm pool member's QEMU still carries the name and QMP socket it was
    launched with: those are what prove it is this machine's."""
    if record.launched_as is None or record.launched_run_dir is None:
        return None
    return tuple(identity_args(record.launched_as, Path(record.launched_run_dir)))


def _find_orphan(name: str, run_dir: Path) -> tuple[int, float] | None:
    """The hypervisor of `name` that nobody recorded, found by its identity arguments.

    A QEMU caught mid-start is still daemonizing: the process boxui launched and the
    daemon it forks carry the same command line for a moment, and the launcher then
    exits. Adopting it would leave the real VM running unseen, so when the command line
    has a `-pidfile`, only the process that file names counts (the daemon writes it
    before the launcher exits); it is waited for briefly.
    """
    wanted = identity_args(name, run_dir)
    deadline = time.monotonic() + ORPHAN_SETTLE_SECONDS
    while True:
        matches: dict[int, tuple[list[str], float]] = {}
        for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.info.get("status") != psutil.STATUS_ZOMBIE and \
                    all(arg in cmdline for arg in wanted):
                matches[proc.pid] = (cmdline, float(proc.info["create_time"]))
        named_in = (_after(cmdline, "-pidfile") for cmdline, _ in matches.values())
        pidfiles = {pidfile for pidfile in named_in if pidfile is not None}
        if matches and not pidfiles:
            pid = min(matches)
            return pid, matches[pid][1]
        for pidfile in pidfiles:
            named = _read_pid(Path(pidfile))
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


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
