"""Crashes of boxui itself while real QEMU guests (TCG) run: items 1, 2, 4 (real cycles),
8 (a start racing crash recovery) and 11 (sockets and keys) of the fault suite.

Three small guests are booted once for the module; each test first makes sure they are
ready and leaves them running. The supervisor is a real process (`boxui daemon` or a CLI
command, which supervises while it runs) that the tests SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backend.drivers.qemu.driver import QemuDriver
from backend.errors import StateDirInUseError
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir, open_state_dir
from backend.state.supervisor_lock import lock_holder
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor
from tests.conftest import BOXUI, cli_env
from tests.faults.conftest import FaultRecorder
from tests.faults.support import (
    HAS_QEMU,
    boxui,
    disk_consistency_problems,
    events_of,
    hypervisor_count_problems,
    hypervisor_pids,
    hypervisors,
    info,
    kill_hard,
    remove_home,
    short_home,
    start_daemon,
    stop_daemon,
    wait_until,
)

#: states a re-adopted machine leaves by itself (its boot or stop is finished)
SETTLING = (InstanceState.BOOTING, InstanceState.STOPPING)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not HAS_QEMU, reason="qemu-system-x86_64 is not installed"),
]

GUESTS = ("g1", "g2", "g3")
MEMORY = "128"
REAL_CYCLES = int(os.environ.get("BOXUI_REAL_SOAK_CYCLES", "10"))


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    home = short_home("real")
    try:
        asyncio.run(boot_guests(home))
        yield home
    finally:
        remove_home(home)


async def boot_guests(home: Path) -> None:
    """Create and boot the three guests at once (a CLI command would boot one at a time),
    then let go of them: they keep running for the tests' supervisors to adopt."""
    engine = await Engine.open(home)
    try:
        sup = Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images))
        async with sup.running(recover=recover_machines):
            for name in GUESTS:
                policy = "on-failure" if name == "g1" else "never"
                await engine.create_machine(MachineSpec(name=name, memory_mib=int(MEMORY),
                                                        restart=policy))
            await asyncio.gather(*(sup.start_machine(name) for name in GUESTS))
    finally:
        await engine.close()


@pytest.fixture
def dirs(home: Path) -> StateDir:
    return open_state_dir(home)


def ensure_ready(home: Path) -> dict[str, int]:
    """Every guest ready (starting any that is not) and its QEMU pid."""
    pids = {}
    for name in GUESTS:
        machine = info(home, name)
        if machine["state"] != "ready":
            out = boxui(home, "start", name)
            assert out.returncode == 0, out.stderr
            machine = info(home, name)
        assert machine["state"] == "ready", machine
        pids[name] = machine["record"]["pid"]
    assert hypervisor_pids(home) == {n: [p] for n, p in pids.items()}
    return pids


def sigkill_running_supervisor(home: Path) -> None:
    """SIGKILL the daemon the CLI started (or, when none runs, a fresh one)."""
    if not kill_lock_holder(home):
        daemon, _ = start_daemon(home)
        kill_hard(daemon)


def kill_lock_holder(home: Path) -> bool:
    """SIGKILL whichever supervisor holds the state dir (False when none does)."""
    holder = lock_holder(open_state_dir(home).lock_file)
    if holder is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.wait_procs([psutil.Process(holder)], timeout=10)
    return True


@pytest.mark.fault("1. SIGKILL supervisor, 3 guests re-adopted")
def test_sigkilled_supervisor_readopts_three_guests(home: Path, dirs: StateDir,
                                                   fault: FaultRecorder) -> None:
    pids = ensure_ready(home)
    sigkill_running_supervisor(home)
    assert all(psutil.pid_exists(p) for p in pids.values()), "guests outlive the supervisor"

    daemon, seconds = start_daemon(home)
    try:
        # the time is bench/recovery.py's figure; under load here it only informs
        fault.note(f"re-adoption of {len(pids)} guests took {seconds:.2f} s")
        for name, pid in pids.items():
            machine = info(home, name)
            assert machine["state"] == "ready" and machine["record"]["pid"] == pid
            assert machine["supervisor_pid"] == daemon.pid
            verb, message, _ = events_of(dirs, name)[-1]
            assert (verb, message) == ("adopted", f"re-adopted running pid {pid}")
        assert hypervisor_pids(home) == {n: [p] for n, p in pids.items()}
    finally:
        stop_daemon(daemon)
    fault.cycle()
    print(f"\nre-adopted 3 guests {seconds:.2f} s after the supervisor started")


@pytest.mark.fault("2. SIGKILL supervisor then one QEMU")
def test_guest_killed_while_supervisor_is_dead(home: Path, dirs: StateDir,
                                               fault: FaultRecorder) -> None:
    pids = ensure_ready(home)
    sigkill_running_supervisor(home)
    os.kill(pids["g1"], signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(pids["g1"]) or
                      psutil.Process(pids["g1"]).status() == psutil.STATUS_ZOMBIE, 5)
    logged = len(events_of(dirs, "g1"))

    daemon, _ = start_daemon(home)
    try:
        crashed = [e for e in events_of(dirs, "g1")[logged:] if e[0] == "crashed"]
        assert len(crashed) == 1, events_of(dirs, "g1")[logged:]
        _, message, reason = crashed[0]
        assert reason == "process gone while boxui was down"
        # restart policy on-failure: scheduled, then really booted again
        assert "restarting in 1 s (failure 1 of 5)" in message
        assert wait_until(lambda: info(home, "g1")["state"] == "ready", 60, 0.5)
        new_pid = info(home, "g1")["record"]["pid"]
        assert new_pid != pids["g1"]
        for name in ("g2", "g3"):
            machine = info(home, name)
            assert machine["state"] == "ready" and machine["record"]["pid"] == pids[name]
            assert events_of(dirs, name)[-1][0] == "adopted"
        assert hypervisor_pids(home) == {"g1": [new_pid], "g2": [pids["g2"]],
                                         "g3": [pids["g3"]]}
    finally:
        stop_daemon(daemon)
    fault.cycle()


@pytest.mark.fault("8. 20 starts racing crash recovery (real)")
async def test_starts_racing_recovery_make_one_qemu(home: Path, fault: FaultRecorder) -> None:
    """Start requests arrive while a new supervisor is still re-adopting: 20 for a stopped
    guest and 20 for a running one; each ends with exactly one QEMU."""
    pids = await asyncio.to_thread(ensure_ready, home)
    assert (await asyncio.to_thread(boxui, home, "stop", "g2")).returncode == 0
    await asyncio.to_thread(sigkill_running_supervisor, home)
    engine = await Engine.open(home)
    try:
        sup = Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images))
        async with sup.running(recover=None):
            await asyncio.gather(recover_machines(sup),
                                 *(sup.start_machine("g1") for _ in range(20)),
                                 *(sup.start_machine("g2") for _ in range(20)))
            running = hypervisor_pids(home)
            assert running["g1"] == [pids["g1"]] and running["g3"] == [pids["g3"]]
            assert len(running["g2"]) == 1 and running["g2"] == [sup.handles["g2"].pid]
            assert engine.projection.state_of("g2") is InstanceState.READY
    finally:
        await engine.close()
    assert hypervisors(home) == {n: 1 for n in GUESTS}
    fault.cycle(40)


@pytest.mark.fault("11. permissions: sockets and keys")
def test_sockets_and_keys_are_private(home: Path, dirs: StateDir,
                                      fault: FaultRecorder) -> None:
    ensure_ready(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in GUESTS:
        run_dir = dirs.machine_run_dir(name)
        sockets = [p for p in run_dir.iterdir() if p.is_socket()]
        assert sockets, f"no QMP socket in {run_dir}"
        for directory in (run_dir, *run_dir.parents):
            if directory == home.parent:
                break
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        machine_dir = dirs.machine_dir(name)
        keys = [p for p in machine_dir.iterdir()
                if p.name in ("id_ed25519", "dropbear_ed25519_host_key")]
        assert len(keys) == 2
        for key in keys:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert stat.S_IMODE(machine_dir.stat().st_mode) == 0o700
    fault.cycle()


# --- item 4, real cycles -------------------------------------------------------------

def pick_operation(rng: random.Random, home: Path) -> tuple[list[str], str]:
    """A random command and the machine it acts on."""
    name = rng.choice(GUESTS)
    state = info(home, name)["state"]
    if rng.random() < 0.2:
        extra = "g4"
        exists = boxui(home, "info", extra).returncode == 0
        return (["rm", "--force", extra] if exists else ["create", "--no-start", extra]), extra
    if state == "ready":
        return rng.choice([["stop", name], ["restart", name], ["stop", "--force", name]]), name
    return ["start", name], name


async def open_engine_as_successor(home: Path) -> Engine:
    """Open the state dir as the next supervisor.

    A CLI killed while it spawned a daemon leaves that daemon importing; it takes the
    lock a moment after the kill, and is one more supervisor to SIGKILL, not a failure.
    """
    for _ in range(20):
        try:
            return await Engine.open(home)
        except StateDirInUseError:
            await asyncio.to_thread(kill_lock_holder, home)
    return await Engine.open(home)


async def recover_and_check(home: Path) -> tuple[dict[str, str], list[str]]:
    engine = await open_engine_as_successor(home)
    problems: list[str] = []
    try:
        sup = Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images))
        async with sup.running(recover=recover_machines):
            async with asyncio.timeout(60):
                while any(engine.projection.state_of(n) in SETTLING
                          for n in engine.projection.names()):
                    await asyncio.sleep(0.1)
            states = {n: engine.projection.state_of(n) for n in engine.projection.names()}
            problems += hypervisor_count_problems(home, states, "QEMU processes")
    finally:
        await engine.close()
    problems += disk_consistency_problems(open_state_dir(home))
    return {n: s.value for n, s in states.items() if s is not None}, problems


ACKED_OUTCOME = {"start": {"ready"}, "stop": {"stopped"}, "restart": {"ready"},
                 "create": {"stopped"}, "rm": {"absent"}}
#: a guest that an earlier, killed command had asked to power off may finish doing so
#: while no supervisor runs; the next `stop` then finds it gone, which is recorded so
GONE_BEFORE_STOP = "process gone while boxui was down"


@pytest.mark.fault("4. soak: SIGKILL supervisor (real guests)")
async def test_sigkill_supervisor_during_real_operations(home: Path,
                                                         fault: FaultRecorder) -> None:
    await asyncio.to_thread(ensure_ready, home)
    rng = random.Random(int(os.environ.get("BOXUI_SOAK_SEED", "7")))
    failures = []
    for cycle in range(REAL_CYCLES):
        argv, target = await asyncio.to_thread(pick_operation, rng, home)
        op = argv[0]
        proc = await asyncio.create_subprocess_exec(
            *BOXUI, *argv, env=cli_env(home), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(proc.wait(), rng.uniform(0.3, 3.0))
        except TimeoutError:
            proc.kill()
            await proc.wait()
        # the supervisor is the daemon the CLI started: it dies here, mid-operation or not
        await asyncio.to_thread(kill_lock_holder, home)
        acked = proc.returncode == 0
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert "Traceback" not in stderr, stderr
        duplicates = {n: c for n, c in hypervisors(home).items() if c > 1}
        states, problems = await recover_and_check(home)
        if duplicates:
            problems.append(f"duplicate QEMU right after the kill: {duplicates}")
        outcome = ACKED_OUTCOME[op]
        if op == "stop" and info(home, target).get("reason") == GONE_BEFORE_STOP:
            outcome = {"crashed"}
        if acked and states.get(target, "absent") not in outcome:
            problems.append(f"acknowledged {argv} but {target} is "
                            f"{states.get(target, 'absent')}")
        fault.cycle()
        if problems:
            fault.lost(1)
            failures.append(f"cycle {cycle} {argv} acked={acked}: {problems}")
            break
    assert failures == []
    print(json.dumps({"real_cycles": REAL_CYCLES}))
