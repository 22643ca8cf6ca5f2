"""Warm start from a memory snapshot against a cold boot, through boxui's supervisor.

Targets (issue 5): restore to ready <= 10 % of a cold boot to ready, and under 1 s.
Targets (issue 16): a claim from a warm pool to ready, p95 <= 4 % of the same run's cold
boot; `boxui run --template ... -- true` end to end under 0.5 s.

    .venv/bin/python bench/warm_start.py [--clones 10] [--claims 10] [--runs 10]
        [--memory 256] [--cache DIR] [--runs-only]

One template variant (1 vCPU, --memory MiB) is built with `--snapshot` (its build boots
it once, outside the timings). Then, each through `Supervisor.start_machine` on a created
machine, timed until it returns with the machine `ready`:
- one cold boot of a plain machine of the same size, and one restore from the snapshot;
- --clones machines restored one after another, each timed; "ready" for a restore
  includes re-seeding the guest's kernel RNG and setting its clock and hostname through
  its agent (shown separately);
- the memory those clones use together (sum of RSS and of PSS of their QEMU processes,
  all running), against the same number of cold-booted machines, measured alike.
- --claims machines started from a warm pool of 2 (`Supervisor.start_machine`, as
  `create --template` does), each once the pool is full again, so each is a claim;
- then, with a real `boxui daemon` on the same state dir and `boxui pool set` 2, --runs
  `boxui run --template bench:worker -- true`, each timed from the CLI's start to its
  exit (the client's start-up, the cell's claim, the command over SSH, the machine
  destroyed), with the daemon's part of it read from the cells' events. `boxui` is what
  a user runs: after bin/setup the native client, which serves run on the exec socket.
  `--runs-only` builds the template and times only these.
The host is shared (2 cores, other work running): the load average is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backend.supervision.supervisor as supervisor_module
from backend.drivers.qemu.accel import resolve_accel
from backend.drivers.qemu.driver import QemuDriver
from backend.guest.image_builder import build_default_image
from backend.pools.manager import PoolManager
from backend.pools.settings import choose_size
from backend.state.cell_projection import cell_verb_of
from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.machine_spec import MachineSpec
from backend.supervision import restore_agent
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.restore_agent import Freshened
from backend.supervision.supervisor import Supervisor
from backend.template_builds.from_source import build_from_source
from backend.templates.machine_from_template import spec_from_template

RESEED_SECONDS: list[float] = []
#: the Python entry point, and what a user runs (the native client where bin/setup built it)
BOXUI_PY = Path(sys.executable).parent / "boxui-py"
BOXUI = Path(sys.executable).parent / "boxui"


def time_reseeds() -> None:
    """Record how long each restore's agent (RNG re-seed, clock, hostname) takes (it is
    part of 'ready')."""
    real = restore_agent.freshen_guest

    async def timed(agent_socket: Path, protocol: int, name: str) -> Freshened:
        started = time.perf_counter()
        try:
            done = await real(agent_socket, protocol, name)
            assert done == Freshened(None, None, None), done
            return done
        finally:
            RESEED_SECONDS.append(time.perf_counter() - started)

    vars(supervisor_module)["freshen_guest"] = timed  # the name the supervisor calls


async def start_timed(sup: Supervisor, spec: MachineSpec) -> float:
    await sup.engine.create_machine(spec)
    started = time.perf_counter()
    await sup.start_machine(spec.name)
    return time.perf_counter() - started


def memory_of(sup: Supervisor, names: list[str]) -> tuple[float, float]:
    """Sum of RSS and PSS (MiB) of these machines' QEMU processes."""
    rss = pss = 0
    for name in names:
        info = psutil.Process(sup.handles[name].pid).memory_full_info()
        rss, pss = rss + info.rss, pss + info.pss
    return rss / 2**20, pss / 2**20


@dataclass
class Figures:
    accel: str
    revision: str
    build_seconds: float
    cold: float
    warm: float
    warm_reseed: float
    clone_times: list[float]
    clone_reseeds: list[float]
    cold_times: list[float]
    #: (RSS, PSS) in MiB of the clones together, and of as many cold-booted machines
    warm_memory: tuple[float, float]
    cold_memory: tuple[float, float]
    claim_times: list[float]
    run_times: list[float] | None = None


async def run(args: argparse.Namespace, home: Path) -> None:
    engine = await Engine.open(home)
    (home / "images").symlink_to(args.cache)  # share the built image, not rebuild it
    driver = QemuDriver()
    sup = Supervisor(engine, driver, DefaultBootFiles(engine.dirs.images))
    figures: Figures | None = None
    try:
        async with sup.running(recover=None):
            if args.runs_only:
                await build_template(args, sup, driver)
            else:
                figures = await measure(args, sup, driver)
                figures.claim_times = await measure_claims(args, sup)
    finally:
        await engine.close()
    run_times = await asyncio.to_thread(measure_runs, args, home)
    if figures is not None:
        figures.run_times = run_times
        report(args, figures)
    report_runs(run_times, cell_phases(home))
    print_last_cell(home)


async def build_template(args: argparse.Namespace, sup: Supervisor,
                         driver: QemuDriver) -> float:
    """The bench:worker variant built with a snapshot; the seconds it took."""
    source = sup.engine.dirs.root / "bench.toml"
    source.write_text(f'template_id = "bench"\n[[variants]]\nrole = "worker"\nvcpus = 1\n'
                      f"memory_mib = {args.memory}\n")
    started = time.perf_counter()
    await build_from_source(sup.engine.dirs, str(source), snapshot=True, driver=driver,
                            accel=resolve_accel("auto"))
    return time.perf_counter() - started


async def measure(args: argparse.Namespace, sup: Supervisor, driver: QemuDriver) -> Figures:
    """Build the template, then time one cold boot, one restore, the clones one after
    another, and as many cold boots for the memory comparison."""
    dirs, accel = sup.engine.dirs, resolve_accel("auto")
    build_seconds = await build_template(args, sup, driver)
    revision = spec_from_template(dirs, "probe", "bench").template_revision or "?"
    time_reseeds()
    cold = await start_timed(sup, MachineSpec(name="cold", memory_mib=args.memory))
    await sup.stop_machine("cold", force=True)
    warm = await start_timed(sup, spec_from_template(dirs, "warm", "bench"))
    warm_reseed = RESEED_SECONDS[-1]
    await sup.stop_machine("warm", force=True)

    clones = [f"clone{i}" for i in range(1, args.clones + 1)]
    clone_times, clone_reseeds = [], []
    for name in clones:
        clone_times.append(await start_timed(sup, spec_from_template(dirs, name, "bench")))
        clone_reseeds.append(RESEED_SECONDS[-1])
    warm_memory = await stop_all(sup, clones)
    colds = [f"cold{i}" for i in range(1, args.clones + 1)]
    cold_times = [await start_timed(sup, MachineSpec(name=n, memory_mib=args.memory))
                  for n in colds]
    cold_memory = await stop_all(sup, colds)
    return Figures(accel.accel, revision, build_seconds, cold, warm, warm_reseed,
                   clone_times, clone_reseeds, cold_times, warm_memory, cold_memory, [])


POOL = 2


async def until_pool_full(manager: PoolManager, timeout: float = 300) -> None:
    async with asyncio.timeout(timeout):
        while len(manager.members) < POOL:
            await asyncio.sleep(0.05)


async def measure_claims(args: argparse.Namespace, sup: Supervisor) -> list[float]:
    """Each machine claims a member of a full pool (it refills between two)."""
    choose_size(sup.engine.dirs, "bench:worker", POOL)
    manager = PoolManager(sup)
    await manager.start()
    times: list[float] = []
    try:
        await claim_each(args, sup, manager, times)
    finally:
        await empty_pools(sup, manager)
    return times


async def claim_each(args: argparse.Namespace, sup: Supervisor, manager: PoolManager,
                     times: list[float]) -> None:
    for i in range(1, args.claims + 1):
        await until_pool_full(manager)
        name = f"claim{i}"
        times.append(await start_timed(sup, spec_from_template(sup.engine.dirs, name,
                                                               "bench")))
        assert sup.engine.store.load_record(name).launched_as, f"{name} was not claimed"
        await sup.stop_machine(name, force=True)


async def empty_pools(sup: Supervisor, manager: PoolManager) -> None:
    """The members go before the daemon's turn (it would re-adopt them: fine, but then
    its first run would not wait on a pool of its own making)."""
    choose_size(sup.engine.dirs, "bench:worker", 0)
    async with asyncio.timeout(300):
        while manager.members or manager.starting:
            await manager.reconcile()
            await asyncio.sleep(0.2)


def boxui(home: Path, *args: str, entry: Path = BOXUI_PY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BOXUI_HOME": str(home)}
    return subprocess.run([str(entry), *args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def measure_runs(args: argparse.Namespace, home: Path) -> list[float]:
    """`boxui run` through a real daemon, each once its pool is full again; `boxui` is
    what a user runs (after bin/setup the native client, which serves run itself)."""
    with (home / "bench-daemon.log").open("wb") as log:
        daemon = subprocess.Popen([str(BOXUI_PY), "daemon", "--home", str(home)],
                                  stdout=subprocess.DEVNULL, stderr=log)
    times = []
    try:
        set_to = boxui(home, "pool", "set", "bench:worker", str(POOL))
        assert set_to.returncode == 0, set_to.stderr
        for _ in range(args.runs):
            wait_for_pool(home)
            started = time.perf_counter()
            ran = boxui(home, "run", "--template", "bench:worker", "--", "true", entry=BOXUI)
            times.append(time.perf_counter() - started)
            assert ran.returncode == 0, ran.stderr
        boxui(home, "pool", "set", "bench:worker", "0")
    finally:
        daemon.terminate()
        daemon.wait(30)
    return times


def cell_phases(home: Path) -> list[tuple[float, float, float]]:
    """Per cell, seconds from its `started` event to `materialized`, to
    `command_completed` and to `destroyed`: the daemon's part of a run."""
    times: dict[str, dict[str, datetime]] = {}
    for event in read_log(home / "events" / "log.jsonl").events:
        verb = cell_verb_of(event.type)
        if verb is not None and event.subject:
            times.setdefault(event.subject, {})[verb.value] = event.time
    phases = []
    for steps in times.values():
        if {"started", "materialized", "command_completed", "destroyed"} <= set(steps):
            start = steps["started"]
            ready, done, gone = ((steps[v] - start).total_seconds()
                                 for v in ("materialized", "command_completed", "destroyed"))
            phases.append((ready, done, gone))
    return phases


def wait_for_pool(home: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = boxui(home, "pool", "ls", "--json")
        if listed.returncode == 0 and any(
                p["ready"] >= POOL for p in json.loads(listed.stdout)["pools"]):
            return
        time.sleep(0.2)
    raise TimeoutError("the pool did not fill")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def stop_all(sup: Supervisor, names: list[str]) -> tuple[float, float]:
    """The machines' memory together (RSS, PSS in MiB), then stop them."""
    memory = memory_of(sup, names)
    for name in names:
        await sup.stop_machine(name, force=True)
    return memory


def report(args: argparse.Namespace, f: Figures) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    ratio = f.warm / f.cold
    print(f"warm start: template bench:worker (1 vCPU, {args.memory} MiB), accel {f.accel},"
          f" revision {f.revision}; host load average {load}")
    print(f"(template build, one cold boot + save, outside the timings: {f.build_seconds:.1f} s)")
    print()
    print(f"{'to ready':<34}{'seconds':>8}")
    print(f"{'cold boot':<34}{f.cold:>8.2f}")
    print(f"{'snapshot restore':<34}{f.warm:>8.2f}   "
          f"(of which the agent: RNG, clock, name: {f.warm_reseed:.3f})")
    print(f"{'ratio restore / cold':<34}{ratio:>8.3f}   target <= 0.10: "
          f"{'OK' if ratio <= 0.10 else 'MISSED'}")
    print(f"{'restore under 1 s':<34}{'yes' if f.warm < 1 else 'no':>8}")
    print()
    print(f"{args.clones} restored from one snapshot, one after another")
    print(f"{'#':>4}{'to ready':>10}{'re-seed':>10}")
    for i, (total, reseed) in enumerate(zip(f.clone_times, f.clone_reseeds, strict=True), 1):
        print(f"{i:>4}{total:>9.2f}s{reseed:>9.2f}s")
    print(f"{'med':>4}{statistics.median(f.clone_times):>9.2f}s"
          f"{statistics.median(f.clone_reseeds):>9.2f}s   max {max(f.clone_times):.2f}s, "
          f"{sum(t < 1 for t in f.clone_times)}/{args.clones} under 1 s")
    print(f"(the {args.clones} cold boots for the memory comparison: median "
          f"{statistics.median(f.cold_times):.2f}s)")
    print()
    (warm_rss, warm_pss), (cold_rss, cold_pss) = f.warm_memory, f.cold_memory
    print(f"memory of {args.clones} machines together{'RSS':>12}{'PSS':>12}")
    print(f"{'restored from one snapshot':<34}{warm_rss:>8.0f} MiB{warm_pss:>8.0f} MiB")
    print(f"{'cold-booted':<34}{cold_rss:>8.0f} MiB{cold_pss:>8.0f} MiB")
    print(f"{'restored / cold':<34}{warm_rss / cold_rss:>12.2f}{warm_pss / cold_pss:>12.2f}")
    report_pool(f)


def report_pool(f: Figures) -> None:
    print()
    # a cold boot under TCG varies by a few tenths of a second from one to the next:
    # the claim is held against the median of every cold boot of the run, not one
    colds = [f.cold, *f.cold_times]
    cold = statistics.median(colds)
    claim95, target = p95(f.claim_times), 0.04 * cold
    print(f"side by side, to ready{'median':>14}{'p95':>9}")
    print(f"{'cold boot':<36}{cold:>8.3f}s{p95(colds):>8.3f}s   ({len(colds)} boots)")
    print(f"{'snapshot restore':<36}{f.warm:>8.3f}s")
    print(f"{'claim from a warm pool':<36}{statistics.median(f.claim_times):>8.3f}s"
          f"{claim95:>8.3f}s   p95 / cold {claim95 / cold:.3f}, target <= 0.04 "
          f"({target:.3f} s): {'OK' if claim95 <= target else 'MISSED'}")
    if f.run_times:
        run95 = p95(f.run_times)
        print(f"{'boxui run --template ... -- true':<36}"
              f"{statistics.median(f.run_times):>8.3f}s{run95:>8.3f}s   end to end, "
              f"target < 0.5 s: {'OK' if run95 < 0.5 else 'MISSED'}")
    print(f"(claims: {', '.join(f'{t:.3f}' for t in f.claim_times)})")
    if f.run_times:
        print(f"(runs:   {', '.join(f'{t:.3f}' for t in f.run_times)})")


def print_last_cell(home: Path) -> None:
    """The last run's events, its cell's and its machine's, ms after the first."""
    events = read_log(home / "events" / "log.jsonl").events
    cells = [e.subject for e in events if e.type.endswith(".cell.v1.started")]
    if not cells:
        return
    mine = [e for e in events if e.subject == cells[-1]]
    print("  the last run's events (ms from its first, + from the one before):")
    before = mine[0].time
    for event in mine:
        print(f"  {(event.time - mine[0].time).total_seconds() * 1000:8.1f} "
              f"+{(event.time - before).total_seconds() * 1000:6.1f}  "
              f"{'.'.join(event.type.rsplit('.', 3)[-3::2])}: {event.message[:60]}")
        before = event.time


def report_runs(run_times: list[float], phases: list[tuple[float, float, float]]) -> None:
    """The runs end to end, and the daemon's part of them from the cells' events."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    entry = "the native client" if BOXUI.read_bytes()[:4] == b"\x7fELF" else "Python"
    print()
    print(f"boxui run --template bench:worker -- true ({entry}), {len(run_times)} runs, "
          f"load average {load}")
    run95 = p95(run_times)
    print(f"  end to end: median {statistics.median(run_times):.3f} s, p95 {run95:.3f} s, "
          f"max {max(run_times):.3f} s   target < 0.5 s: {'OK' if run95 < 0.5 else 'MISSED'}")
    if phases:
        columns = list(zip(*phases, strict=True))
        print("  in the daemon, median from the cell's start: "
              + ", ".join(f"{label} {statistics.median(col):.3f} s" for label, col in
                          zip(("materialized", "command done", "destroyed"), columns,
                              strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clones", type=int, default=10)
    parser.add_argument("--claims", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--runs-only", action="store_true",
                        help="only `boxui run` (the template is built, nothing else timed)")
    parser.add_argument("--cache", type=Path, default=Path(
        os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache")))
    args = parser.parse_args()
    asyncio.run(build_default_image(args.cache))  # build once, outside the timings
    home = Path(tempfile.mkdtemp(prefix="bxw-", dir="/tmp"))  # short: QMP socket paths
    try:
        asyncio.run(run(args, home))
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(home) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
