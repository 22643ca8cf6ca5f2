"""Helpers shared by the fault tests: running the CLI, a `boxui daemon` that can be
SIGKILLed, and finding the hypervisor processes that belong to one state dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from backend.state.event_log import read_log
from backend.state.lifecycle import ACTIVE_STATES, InstanceState
from backend.state.machine_store import MachineStore, machine_view
from backend.state.projection import Projection
from backend.state.state_dir import StateDir, open_state_dir
from backend.state.supervisor_lock import lock_holder
from tests.conftest import BOXUI, IMAGE_CACHE, cli_env
from tests.line_reader import LineReader

HAS_QEMU = shutil.which("qemu-system-x86_64") is not None


def short_home(tag: str) -> Path:
    """A state dir whose socket paths fit in 108 bytes, sharing the built guest image."""
    home = Path(f"/tmp/bxf-{os.getpid()}-{tag}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "images").symlink_to(IMAGE_CACHE)
    return home


def remove_home(home: Path) -> None:
    for proc in owned_processes(home):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(home, ignore_errors=True)


def owned_processes(home: Path) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line mentions `home`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(str(home) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def hypervisors(home: Path) -> Counter[str]:
    """How many live hypervisor processes (QEMU or the fake driver's stand-ins) each
    machine of `home` has, told apart by the identity arguments on their command lines."""
    counts: Counter[str] = Counter()
    for proc in owned_processes(home):
        for arg in proc.info["cmdline"] or []:
            if arg.startswith("boxui-") and ",process=boxui-" in arg:
                counts[arg.split(",", 1)[0].removeprefix("boxui-")] += 1
    return counts


def duplicates_after_settling(home: Path, settle: float = 3.0) -> dict[str, int]:
    """Machines with more than one hypervisor. A QEMU that was being launched when its
    supervisor died is still daemonizing: its launcher has the same command line for a
    moment and then exits by itself, so duplicates must persist for `settle` s to count."""
    def duplicates() -> dict[str, int]:
        return {n: c for n, c in hypervisors(home).items() if c > 1}

    wait_until(lambda: not duplicates(), settle)
    return duplicates()


def hypervisor_pids(home: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for proc in owned_processes(home):
        for arg in proc.info["cmdline"] or []:
            if arg.startswith("boxui-") and ",process=boxui-" in arg:
                out.setdefault(arg.split(",", 1)[0].removeprefix("boxui-"), []).append(proc.pid)
    return out


def boxui(home: Path, *args: str, timeout: float = 120,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                         env=cli_env(home), timeout=timeout, cwd=cwd)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def info(home: Path, name: str) -> dict[str, Any]:
    """What `boxui info --json` shows, read in this process (a CLI run costs 0.6 s)."""
    dirs = open_state_dir(home, create=False)
    holder = lock_holder(dirs.lock_file)
    machine = MachineStore(dirs).load(name, supervised=holder is not None)
    return machine_view(machine) | {"supervisor_pid": holder}


def start_daemon(home: Path, timeout: float = 30) -> tuple[subprocess.Popen[str], float]:
    """Start `boxui daemon`; return it and the seconds until it said it supervises (which
    it says only after crash recovery has re-adopted or crashed every machine)."""
    started = time.monotonic()
    proc = subprocess.Popen([*BOXUI, "daemon"], env=cli_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    if lines.until("supervising", timeout):
        return proc, time.monotonic() - started
    proc.kill()
    proc.wait(10)
    raise AssertionError("daemon did not start: " + "".join(lines.seen))


def kill_hard(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(10)


def stop_daemon(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(20)


def events_of(dirs: StateDir, name: str) -> list[tuple[str, str, str | None]]:
    """(verb, message, reason) of every logged event of one machine."""
    return [(e.type.rsplit(".", 1)[1], e.message, e.data.get("reason"))
            for e in read_log(dirs.event_log).events if e.subject == name]


def hypervisor_count_problems(home: Path, states: dict[str, InstanceState | None],
                              what: str = "hypervisors") -> list[str]:
    """Each machine that is up has exactly one hypervisor and every other one none."""
    running = hypervisors(home)
    problems = []
    for name in set(states) | set(running):
        want = 1 if active(states.get(name)) else 0
        if running[name] != want:
            problems.append(f"{name} is {states.get(name)} with {running[name]} {what}")
    return problems


def disk_consistency_problems(dirs: StateDir) -> list[str]:
    """Every file parses, and a replay of the log gives the state each `state.json`
    holds, for exactly the machines that have a directory."""
    problems: list[str] = []
    scan = read_log(dirs.event_log)
    problems += [f"event log line {b.line}: {b.reason}" for b in scan.bad_records]
    replayed = Projection.replay(scan.events)
    if replayed.rejected:
        problems.append(f"{replayed.rejected} logged events do not replay")
    store = MachineStore(dirs)
    on_disk = {m.name: m for m in store.load_all(supervised=True)}
    for name, machine in on_disk.items():
        if machine.broken:
            problems.append(f"{name}: broken: {machine.reason}")
            continue
        logged = replayed.state_of(name)
        assert machine.record is not None
        if logged is not machine.record.state:
            problems.append(f"{name}: log replays to {logged} but state.json says "
                            f"{machine.record.state.value}")
    for name in replayed.names():
        if name not in on_disk:
            problems.append(f"{name}: in the log as {replayed.state_of(name)} "
                            "but has no directory")
    leftovers = [p.name for p in dirs.root.rglob(".boxui-tmp-*")]
    if leftovers:
        problems.append(f"temp files left: {leftovers}")
    return problems


def wait_until(check: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


def active(state: InstanceState | None) -> bool:
    return state in ACTIVE_STATES


def iter_names(n: int) -> Iterator[str]:
    for i in range(n):
        yield f"m{i}"
