"""Can the app keep 1,000 machines live? (issue targets: < 15 % of one core, p95 < 100 ms)

Run: .venv/bin/python bench/tui.py [--machines 1000] [--seconds 60] [--terminal]
     [--navigate] [--timeline] [--hosts N]

`--hosts N` (issue 17): the app with N other hosts of `--machines` machines each and none
of its own (`--hosts 5`: 5,000 rows with the HOST column), every row updating at 1 Hz.
The hosts are stand-in hosts in this process (`boxui/tui/fleet/standin.py`, shown as
`standin://NAME`): each round, each one stores a sample per machine in its snapshot and
posts one `HostHealthSampled` for all of them, as a real follower does when its remote
daemon's health stream delivers a round. So the app's side is measured (messages, the
fleet's rows, the table update, frames); SSH and the remote daemons are not.

`--navigate` measures with k9s-style navigation on, as a user who lives in the app has
it: every third row marked (`space`), a filter on the machines (`/!~9$`: a regular
expression, inverted, keeping 90 % of them) and one on the events pane.

What runs: the real `BoxuiApp` over a real `EmbeddedBackend` (engine, supervisor, event
feed, health feed, spec watcher) in a temp state dir with `--machines` machines, all
`ready`. They reach `ready` the way they would after boxui restarts with running VMs:
each was recorded as booted and ready, and the supervisor re-adopts it at startup (the
bench driver trusts every adoption and answers every QMP probe at once; no process is
checked or sampled, but the supervisor's heartbeat runs as it would).

What stands in: health sampling. The app is started with `sample_health=False`; once a
second the bench calls the supervisor's own `HealthSampler.sample_once()`, with the
per-machine probe (`_sample`: psutil + QMP, measured separately by bench/health.py)
replaced by one that returns a sample whose `cpu_percent` is the round number. So every
round changes every row's CPU cell (and its UPTIME cell, as in real use), and the
fan-out to history and subscribers, the app's health worker, `HealthSampled`, the
table update, the detail pane and the screen refresh are the product's code.

What is measured, after a 2-round warm-up:
- CPU: `time.process_time()` (user + system, all threads) of this one process over the
  measured rounds, as % of one core. This includes the bench's sample fan-out (what the
  real sampler costs besides psutil/QMP).
- update -> row: for every row on screen and round, from the start of the round's
  `sample_once()` to `MachineTable._write` storing that row's new CPU value and asking
  for its line to be redrawn (a per-instance wrapper around `_write`). p50/p95/max over
  all those rows and rounds. Rows off screen are not built when sampled: the table
  notes them and builds each when it is next drawn, sorted or read.
- update -> frame: per round, from the same start to the end of the first screen update
  (`App._display`) after that round's last row update: the frame that shows the rows.
  Headless (default), Textual composes the frame but skips turning it into escape codes
  and writing them; `--terminal` runs on the real terminal (run it in tmux or a terminal
  of 160x50 or more) so that cost is included too. Terminal emulator time is never
  included.
With `--timeline`, the first machine's lifecycle timeline (`T`) is opened before the
rounds: it reads the whole event log (every machine's events), then redraws once a
second over the table, which keeps updating underneath. The table is not on screen
then, so "update -> frame" gives way to "timeline redraw": ms per rebuild of the
timeline's strips, held to the same p95 target.
Setup (writing 1,000 machines, startup, the first 1,000-row draw) is not measured; the
`ls` cache refresh (`listing_cache.refresh`, which rewrites the whole cache per machine
write and makes setup quadratic) is skipped during setup and restored before measuring;
no machine files are written while measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import RenderableType
from textual.screen import Screen
from textual.strip import Strip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boxui.tui.app
from backend.drivers.base import (
    AdoptRefusal,
    AdoptRequest,
    DriverCapabilities,
    ExitInfo,
    GuestMemory,
    HypervisorDriver,
    LaunchSpec,
    ProbeResult,
    StopTimeouts,
    VmHandle,
)
from backend.state import listing_cache
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.health import HealthSample
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.fleet.fleet import Fleet
from boxui.tui.fleet.standin import StandinFollower
from boxui.tui.messages import BackendStarted
from boxui.tui.screens.timeline import TimelineScreen
from boxui.tui.widgets.machine_table import MachineTable, Row

TARGET_CPU_PERCENT = 15.0
TARGET_P95_MS = 100.0
WARMUP_ROUNDS = 2


class BenchDriver(HypervisorDriver):
    """Adopts every recorded machine, whose QMP always answers (recovery's adoption probe
    and the supervisor's heartbeat), and never sees one exit; nothing else is called.
    Without an answering probe every machine was adopted `unresponsive`, and each
    heartbeat re-read every machine.toml for its restart policy: not the fleet of
    `ready` machines this bench is about."""

    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities("bench", snapshots=False, graceful_stop=False, accels=())

    async def adopt(self, request: AdoptRequest) -> VmHandle | AdoptRefusal:
        return VmHandle(name=request.name, pid=request.pid, start_time=request.start_time,
                        ssh_port=request.ssh_port, boot_id=request.boot_id,
                        accel=request.accel, console_log=request.console_log,
                        qmp_socket=request.run_dir / "qmp.sock")

    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def guest_memory(self, handle: VmHandle) -> GuestMemory:
        return GuestMemory(512 << 20, 300 << 20)

    async def start(self, spec: LaunchSpec) -> VmHandle:
        raise NotImplementedError

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        raise NotImplementedError

    async def stop(self, handle: VmHandle, timeouts: StopTimeouts) -> ExitInfo:
        raise NotImplementedError

    async def kill(self, handle: VmHandle) -> None:
        raise NotImplementedError

    async def probe(self, handle: VmHandle) -> ProbeResult:
        return ProbeResult(alive=True, responsive=True, status="running")


async def write_machines(root: Path, count: int) -> None:
    """`count` machines recorded as booted and ready, each with this process as its
    'hypervisor' (the bench driver adopts it; nothing ever signals it)."""
    engine = await Engine.open(root)
    started = psutil.Process().create_time()
    try:
        for i in range(count):
            name = f"m{i:04d}"
            await engine.create_machine(MachineSpec(name=name))

            def booted(record: RuntimeRecord, port: int = 20000 + i) -> None:
                record.pid, record.process_start_time = os.getpid(), started
                record.accel, record.ssh_port, record.boot_id = "kvm", port, "bench"

            await engine.transition(name, Verb.BOOTING, update=booted, message="bench")
            await engine.transition(name, Verb.READY, message="bench")
    finally:
        await engine.close()


def standin_hosts(hosts: int, machines: int) -> list[StandinFollower]:
    """`hosts` stand-in hosts of `machines` ready machines each (see the docstring)."""
    started = psutil.Process().create_time()

    def ready(name: str, port: int) -> LoadedMachine:
        record = RuntimeRecord(state=InstanceState.READY, accel="kvm", ssh_port=port,
                               started_at=datetime.fromtimestamp(started, UTC))
        return LoadedMachine(name=name, spec=MachineSpec(name=name), record=record,
                             state=InstanceState.READY)

    return [StandinFollower(f"standin-{h + 1}", [ready(f"m{i:04d}", 20000 + i)
                                                 for i in range(machines)])
            for h in range(hosts)]


@dataclass
class Probes:
    """What the instrumented app records while the rounds run."""

    round: int = 0
    round_start: dict[int, float] = field(default_factory=dict)
    cell_times: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    frames: list[float] = field(default_factory=list)
    reconciles: list[float] = field(default_factory=list)
    #: with --timeline: ms per redraw of the timeline's strips (`TimelineView._build`)
    timeline_builds: list[float] = field(default_factory=list)


class BenchApp(BoxuiApp):
    """BoxuiApp plus the bench loop, started once the backend is up (Textual runs
    BoxuiApp.on_backend_started right after this handler: no super() call)."""

    # Textual resolves a relative CSS_PATH against the subclass's module: point at boxui's
    CSS_PATH = str(Path(boxui.tui.app.__file__).with_name(BoxuiApp.CSS_PATH))

    def __init__(self, backend: EmbeddedBackend, rounds: int, restore: Callable[[], None],
                 profile: cProfile.Profile | None = None, navigate: bool = False,
                 timeline: bool = False, hosts: list[StandinFollower] | None = None) -> None:
        super().__init__(backend, fleet=Fleet(hosts or []))
        self.standins = hosts or []
        self.navigate = navigate
        self.timeline = timeline
        self.embedded = backend  # the bench drives its supervisor's sampler directly
        self.rounds = rounds
        self.profile = profile
        self._restore = restore
        self.report: dict[str, Any] = {}

    def on_backend_started(self, _: BackendStarted) -> None:
        self.run_worker(self._bench(), name="bench", group="bench", exit_on_error=False)

    async def _bench(self) -> None:
        try:
            self.report = await self._measure()
        finally:
            self.exit()

    async def _measure(self) -> dict[str, Any]:
        table = self.query_one(MachineTable)
        remote = sum(len(host.truth) for host in self.standins)
        while table.row_count < len(self._machines) + remote or not (self._machines or
                                                                   remote):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the first 1,000-row frame
        if self.navigate:
            await self._navigate(table)
        self._restore()
        probes = self._instrument(table)
        if self.timeline:
            await self._open_timeline(probes)
        cpu, wall = await self._run_rounds(probes)
        return self._summarise(probes, cpu, wall)

    async def _navigate(self, table: MachineTable) -> None:
        """Marks and filters as a user would set them (the app's own code paths)."""
        self.set_filter("machines", "!~9$")
        self.set_filter("events", "bench")
        for name in table.row_names[::3]:
            table.toggle_mark(name)
        self._update_marks_title()
        await asyncio.sleep(1.0)  # the filtered, marked frame

    async def _open_timeline(self, probes: Probes) -> None:
        """`T` on the first machine: the timeline reads the whole log (every machine's
        events) and then redraws once a second, over the table that keeps updating."""
        self.action_timeline()
        while not (isinstance(self.screen, TimelineScreen) and self.screen.loaded):
            await asyncio.sleep(0.05)
        view = self.screen.view
        original_build = view._build

        def build() -> list[Strip]:
            start = time.perf_counter()
            try:
                return original_build()
            finally:
                probes.timeline_builds.append(1000 * (time.perf_counter() - start))

        view._build = build  # type: ignore[method-assign]  # measuring needs the hook

    def _instrument(self, table: MachineTable) -> Probes:
        """Wrap the table's row write and update, the app's frame output and the
        sampler's per-machine probe, so that each records into the returned `Probes`."""
        probes = Probes()
        original_write, original_update = table._write, table.update
        original_display = self._display

        def write(name: str, row: Row, window: range | None = None) -> None:
            original_write(name, row, window)
            cpu = row[0]["cpu"]
            if cpu.isdigit():
                probes.cell_times[int(cpu)].append(time.perf_counter())

        def display(screen: Screen[object], renderable: RenderableType | None) -> None:
            original_display(screen, renderable)
            if renderable is not None:
                probes.frames.append(time.perf_counter())

        def update(rows: Iterable[tuple[str, dict[str, str], str]]) -> None:
            start = time.perf_counter()
            original_update(rows)
            probes.reconciles.append(1000 * (time.perf_counter() - start))

        async def fake_sample(handle: VmHandle) -> HealthSample:
            return HealthSample(handle.name, time.time(), float(probes.round), 64 << 20,
                                512 << 20, 300 << 20, None)

        table._write = write  # type: ignore[method-assign]  # measuring needs the hook
        table.update = update  # type: ignore[method-assign]  # measuring needs the hook
        self._display = display  # type: ignore[method-assign]  # measuring needs the hook
        sampler = self.embedded.supervisor.health
        sampler._sample = fake_sample  # type: ignore[method-assign]  # see the docstring
        return probes

    async def _run_rounds(self, probes: Probes) -> tuple[float, float]:
        """Warm up, then sample once a second; returns (CPU, wall) seconds measured."""
        sampler = self.embedded.supervisor.health
        loop = asyncio.get_running_loop()
        tick = loop.time()
        cpu0 = wall0 = 0.0
        for r in range(1, WARMUP_ROUNDS + self.rounds + 1):
            if r == WARMUP_ROUNDS + 1:
                cpu0, wall0 = time.process_time(), time.perf_counter()
                probes.reconciles.clear()
                if self.profile is not None:
                    self.profile.enable()
            probes.round = r
            probes.round_start[r] = time.perf_counter()
            await sampler.sample_once()
            for host in self.standins:
                host.sample(float(r))
            tick += 1.0
            await asyncio.sleep(max(0.0, tick - loop.time()))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if self.profile is not None:
            self.profile.disable()
        return cpu, wall

    def _summarise(self, probes: Probes, cpu: float, wall: float) -> dict[str, Any]:
        measured = range(WARMUP_ROUNDS + 1, WARMUP_ROUNDS + self.rounds + 1)
        cells = sorted(1000 * (t - probes.round_start[r])
                       for r in measured for t in probes.cell_times[r])
        frame_ms: list[float] = []
        missing = 0
        for r in measured:
            if not probes.cell_times[r]:
                missing += 1  # coalesced into a later round, never shown
                continue
            i = bisect.bisect_right(probes.frames, max(probes.cell_times[r]))
            if i < len(probes.frames):
                frame_ms.append(1000 * (probes.frames[i] - probes.round_start[r]))
        return {
            "machines": self.query_one(MachineTable).row_count, "hosts": len(self.standins),
            "rounds": self.rounds, "wall": wall,
            "cpu": cpu, "cells": cells, "frames": sorted(frame_ms), "missing": missing,
            "cells_expected": self.rounds * self._rows_on_screen(),
            "navigate": self.navigate,
            "headless": self.is_headless, "reconciles": sorted(probes.reconciles),
            "timeline": self.timeline, "timeline_builds": sorted(probes.timeline_builds),
            "states": Counter(m.state.value for m in self._machines.values()),
        }

    def _rows_on_screen(self) -> int:
        table = self.query_one(MachineTable)
        window = table._window()
        return len(range(window.start, min(window.stop, table.row_count)))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def render(report: dict[str, Any]) -> str:
    cpu_pct = 100 * report["cpu"] / report["wall"]
    cells, frames = report["cells"], report["frames"]
    mode = "headless (frames composed, not written)" if report["headless"] else \
        "terminal (frames composed and written)"
    if report["timeline"]:
        mode += "; the timeline (T) open over the table"
    lines = [
        (f"{report['hosts']} stand-in hosts x {report['machines'] // report['hosts']} = "
         if report["hosts"] else "")
        + f"{report['machines']} machines, {report['rounds']} rounds at 1 Hz, "
        f"{report['wall']:.1f} s, {mode}; load average {report['load']}"
        + (", with marks and filters (--navigate)" if report["navigate"] else ""),
        f"rows updated: {len(cells)} of {report['cells_expected']}; "
        f"rounds never shown (coalesced): {report['missing']}; machines at the end: "
        + ", ".join(f"{n} {state}" for state, n in report["states"].most_common()),
        "",
        f"{'metric':<24}{'p50':>9}{'p95':>9}{'max':>9}{'target':>10}  result",
    ]
    ok_cpu = cpu_pct < TARGET_CPU_PERCENT
    lines.append(f"{'app CPU (% of a core)':<24}{'':>9}{'':>9}{cpu_pct:>8.1f}%"
                 f"{TARGET_CPU_PERCENT:>9.0f}%  {'OK' if ok_cpu else 'MISSED'}")
    rows: list[tuple[str, list[float]]] = [("update -> row (ms)", cells)]
    if report["timeline"]:  # the timeline covers the table: no frame shows its rows
        rows.append(("timeline redraw (ms)", report["timeline_builds"]))
    else:
        rows.append(("update -> frame (ms)", frames))
    for label, values in rows:
        p95 = pct(values, 95)
        ok = p95 < TARGET_P95_MS
        lines.append(f"{label:<24}{pct(values, 50):>9.1f}{p95:>9.1f}"
                     f"{(values[-1] if values else float('nan')):>9.1f}"
                     f"{TARGET_P95_MS:>8.0f}ms  {'OK' if ok else 'MISSED'}")
    rec = report["reconciles"]
    lines.append(f"{'MachineTable.update':<24}{pct(rec, 50):>9.1f}{pct(rec, 95):>9.1f}"
                 f"{(rec[-1] if rec else float('nan')):>9.1f}  (ms per call, "
                 f"{len(rec)} calls; no target)")
    lines.append(f"CPU per round: {1000 * report['cpu'] / report['rounds']:.0f} ms; "
                 f"mean frame latency {statistics.fmean(frames) if frames else 0:.1f} ms")
    return "\n".join(lines)


async def bench(machines: int, seconds: int, terminal: bool,
                profile: cProfile.Profile | None = None,
                navigate: bool = False, timeline: bool = False,
                hosts: int = 0) -> dict[str, Any]:
    real_refresh = listing_cache.refresh
    with tempfile.TemporaryDirectory(prefix="boxui-bench-") as tmp:
        root = Path(tmp) / "home"
        listing_cache.refresh = lambda dirs, names: None  # setup only; see docstring
        t = time.perf_counter()
        await write_machines(root, 0 if hosts else machines)
        print(f"wrote {0 if hosts else machines} machines in {time.perf_counter() - t:.1f} s",
              flush=True)

        def restore() -> None:
            listing_cache.refresh = real_refresh

        options = BackendOptions(home=root, driver_factory=BenchDriver, sample_health=False)
        app = BenchApp(EmbeddedBackend(options), seconds, restore, profile, navigate,
                       timeline, standin_hosts(hosts, machines) if hosts else None)
        try:
            if terminal:
                await app.run_async()
            else:
                await app.run_async(headless=True, size=(160, 50))
        finally:
            restore()
        if not app.report:
            raise SystemExit("the bench did not finish (see the app's notifications)")
        app.report["load"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        return app.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60, help="measured rounds (1 Hz)")
    parser.add_argument("--terminal", action="store_true",
                        help="draw on this terminal instead of headless")
    parser.add_argument("--navigate", action="store_true",
                        help="with rows marked and filters on (see above)")
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    parser.add_argument("--profile", type=Path, metavar="PSTATS",
                        help="cProfile the measured rounds into this file and print the top "
                        "functions (profiling inflates the timings: use for attribution)")
    parser.add_argument("--timeline", action="store_true",
                        help="measure with the lifecycle timeline (T) of a machine open")
    parser.add_argument("--hosts", type=int, default=0, metavar="N",
                        help="N stand-in hosts of --machines machines each, none local")
    args = parser.parse_args()
    if args.terminal and not sys.stdout.isatty():
        parser.error("--terminal needs a terminal (run it in tmux or a terminal window)")
    profile = cProfile.Profile() if args.profile else None
    text = render(asyncio.run(bench(args.machines, args.seconds, args.terminal, profile,
                                    args.navigate, args.timeline, args.hosts)))
    if profile is not None:
        profile.dump_stats(args.profile)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
        text += "\n\n" + out.getvalue().strip()
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
