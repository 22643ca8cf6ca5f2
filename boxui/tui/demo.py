"""`boxui demo`: the real app over sample machines that act out every lifecycle state.

A newcomer should see creating, booting, ready, busy, draining, stopping, stopped and
failed within a minute, without QEMU, KVM or a guest image. So the demo runs the real
engine, supervisor, health sampler and app, and swaps only the hypervisor: `DemoDriver`
launches a tiny stand-in process per machine instead of QEMU. Pids, CPU and RSS health,
pidfd exit watching and stop/kill are therefore all real; only the guest is pretend.
A `DemoDirector` then plays a scripted story through the same engine and supervisor calls
the rest of boxui uses, looping while the app is open.

Everything lives in its own state dir (`<normal state dir>-demo` unless `--home`), which
the demo wipes at start, but only when it carries the `.boxui-demo` marker the demo
wrote itself. Unlike real VMs, demo guests do not outlive boxui: the app kills them when
it exits, and each stand-in also exits by itself if its parent (the app) goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import zlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from backend.drivers.base import (
    AdoptRefusal,
    DriverCapabilities,
    ExitInfo,
    GuestMemory,
    HypervisorDriver,
    LaunchSpec,
    ProbeResult,
    VmHandle,
)
from backend.drivers.errors import DriverError
from backend.drivers.process_identity import PidWatch, start_time_of, verify_identity
from backend.drivers.qemu.accel import AccelChoice
from backend.drivers.qemu.driver import identity_args
from backend.errors import BoxuiError, StateDirError
from backend.state.lifecycle import InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.state.process_liveness import same_process
from backend.state.state_dir import StateDir, default_home, open_state_dir
from backend.state.supervisor_lock import lock_holder
from backend.supervision.boot_files import BootFiles, BootFilesProvider, ProgressFn
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.messages import BackendStarted
from boxui.tui.widgets.machine_table import MachineTable

log = logging.getLogger("boxui.demo")

MARKER = ".boxui-demo"
DEMO_ACCEL = "demo"

#: The stand-in "guest": burns a drifting 5-30 % of each 200 ms (40-60 % while its
#: machine is busy; SIGUSR1/SIGUSR2 switch) so the CPU column and sparkline move, and
#: exits as soon as its parent is gone, so a killed demo never leaves CPU burners behind.
#: argv: parent pid, then QEMU's identity arguments (unused here, but on the cmdline so
#: adoption checks and `pgrep -f boxui-<name>` work as they do for QEMU).
STAND_IN = """\
import os, random, signal, sys, time
parent = int(sys.argv[1])
low, high = 0.05, 0.30
def heavy(*_):
    global low, high
    low, high = 0.40, 0.60
def light(*_):
    global low, high
    low, high = 0.05, 0.30
signal.signal(signal.SIGUSR1, heavy)
signal.signal(signal.SIGUSR2, light)
share = random.uniform(low, high)
while os.getppid() == parent:
    share = min(high, max(low, share + random.uniform(-0.05, 0.05)))
    start = time.monotonic()
    while time.monotonic() - start < 0.2 * share:
        pass
    time.sleep(max(0.0, 0.2 - (time.monotonic() - start)))
"""


# --- the demo hypervisor --------------------------------------------------------------


@dataclass(frozen=True)
class GuestPlan:
    """How one demo guest behaves: how long its pretend boot takes, and whether it fails."""

    boot_seconds: float
    fail_boot: str | None = None


@dataclass
class _Guest:
    name: str
    pid: int
    start_time: float
    watch: PidWatch
    proc: asyncio.subprocess.Process | None
    memory_mib: int
    console_log: Path
    ready: bool = False
    stopping: bool = False


class DemoDriver(HypervisorDriver):
    """A hypervisor driver for `boxui demo` only: each guest is a stand-in process.

    Machines without a plan (e.g. one a user creates with `n` during the demo) boot in a
    random 2-5 s. Durations are divided by `speed`, so tests can run the story fast.
    """

    def __init__(
        self,
        plans: Mapping[str, GuestPlan] | None = None,
        *,
        speed: float = 1.0,
        stop_seconds: float = 1.5,
        rng: random.Random | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.plans = dict(plans or {})
        self.speed = speed
        self.stop_seconds = stop_seconds
        self._rng = rng or random.Random()
        self._guests: dict[int, _Guest] = {}
        #: every stand-in ever started, pid -> start time, for the final sweep
        self.spawned: dict[int, float] = {}

    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities(name="demo", snapshots=False, graceful_stop=True,
                                  accels=(DEMO_ACCEL,))

    def plan(self, name: str) -> GuestPlan:
        if name not in self.plans:
            self.plans[name] = GuestPlan(self._rng.uniform(2.0, 5.0))
        return self.plans[name]

    async def start(self, spec: LaunchSpec) -> VmHandle:
        self._forget_exited()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STAND_IN, str(os.getpid()),
            *identity_args(spec.name, spec.run_dir),
            start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        started = start_time_of(proc.pid)
        if started is None:
            await proc.wait()
            raise DriverError(f"{spec.name}: the demo guest's process exited at once")
        self.spawned[proc.pid] = started
        guest = _Guest(spec.name, proc.pid, started, PidWatch(proc.pid), proc,
                       spec.memory_mib, spec.console_log)
        self._guests[proc.pid] = guest
        await _console(spec.console_log, _boot_lines(spec.name)[:1], fresh=True)
        return VmHandle(name=spec.name, pid=proc.pid, start_time=started,
                        ssh_port=spec.ssh_port, boot_id=spec.boot_id, accel=spec.accel,
                        console_log=spec.console_log, qmp_socket=spec.run_dir / "qmp.sock")

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        guest = self._guests.get(handle.pid)
        if guest is None:
            raise DriverError(f"{handle.name}: not a demo guest this demo started")
        plan = self.plan(handle.name)
        boot = plan.boot_seconds / self.speed
        lines = _boot_lines(handle.name)[1:]
        for line in lines:  # the console fills in while the "kernel" boots
            if await _exits_within(guest.watch, min(boot, timeout) / len(lines)):
                raise DriverError(f"{handle.name}: the demo guest's process exited "
                                  "before it was ready")
            await _console(guest.console_log, [line])
        if plan.fail_boot:
            await _console(guest.console_log, [f"[    2.718281] Kernel panic - not syncing: "
                                               f"{plan.fail_boot}"])
            raise DriverError(plan.fail_boot)
        if boot > timeout:
            raise DriverError(f"{handle.name}: not ready after {timeout:.0f} s")
        guest.ready = True
        await _console(guest.console_log, [f"{handle.name} login: (demo guest ready)"])

    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        guest = self._guests.get(handle.pid)
        if guest is None:
            return ExitInfo("vanished", "not a demo guest this demo knows")
        await guest.watch.wait()
        if guest.proc is not None:
            await guest.proc.wait()
        if guest.stopping:
            return ExitInfo("host-stop", "stopped by boxui")
        return ExitInfo("vanished", "the demo guest's process exited")

    async def stop(self, handle: VmHandle, timeout: float) -> ExitInfo:
        """A pretend ACPI power-off that takes `stop_seconds`, so `stopping` is seen."""
        guest = self._guests.get(handle.pid)
        if guest is None:
            return ExitInfo("vanished", "not a demo guest this demo knows")
        guest.stopping = True
        await _console(guest.console_log, ["[  OK  ] Reached target Power-Off (demo)."])
        await _exits_within(guest.watch, min(self.stop_seconds / self.speed, timeout))
        guest.watch.send(signal.SIGTERM)
        await guest.watch.wait()
        if guest.proc is not None:
            await guest.proc.wait()
        return ExitInfo("host-stop", "powered off")

    async def kill(self, handle: VmHandle) -> None:
        guest = self._guests.get(handle.pid)
        if guest is None:
            return
        guest.stopping = True
        guest.watch.send(signal.SIGKILL)
        await guest.watch.wait()

    async def probe(self, handle: VmHandle) -> ProbeResult:
        guest = self._guests.get(handle.pid)
        alive = guest is not None and not guest.watch.exited
        return ProbeResult(alive, alive, "running" if alive else "exited")

    async def adopt(
        self, name: str, pid: int, start_time: float, ssh_port: int, boot_id: str,
        accel: str, run_dir: Path, console_log: Path,
    ) -> VmHandle | AdoptRefusal:
        problem = verify_identity(pid, start_time, identity_args(name, run_dir))
        if problem is not None:
            return AdoptRefusal(problem)
        self.spawned[pid] = start_time
        self._guests[pid] = _Guest(name, pid, start_time, PidWatch(pid), None, 256,
                                   console_log, ready=True)
        return VmHandle(name=name, pid=pid, start_time=start_time, ssh_port=ssh_port,
                        boot_id=boot_id, accel=accel, console_log=console_log,
                        qmp_socket=run_dir / "qmp.sock")

    async def guest_memory(self, handle: VmHandle) -> GuestMemory:
        """A plausible, slowly breathing memory use, different per machine (by name)."""
        guest = self._guests.get(handle.pid)
        total = (guest.memory_mib if guest else 256) << 20
        phase = zlib.crc32(handle.name.encode()) % 628 / 100
        now = time.time()
        share = 0.45 + 0.2 * math.sin(now / 17 + phase) + 0.05 * math.sin(now / 3.1 + phase)
        used = int(total * share)
        return GuestMemory(total, total - used)

    async def close(self, handle: VmHandle) -> None:
        """Keep the pidfd: `shutdown`, which runs once the supervisor has let go (so the
        kills are not recorded as crashes), still needs it to kill and reap the guest."""

    def set_load(self, name: str, busy: bool) -> None:
        """Make a ready guest's stand-in work harder (busy) or go back to idling."""
        for guest in self._guests.values():
            if guest.name == name and guest.ready and not guest.watch.exited:
                guest.watch.send(signal.SIGUSR1 if busy else signal.SIGUSR2)

    async def shutdown(self, timeout: float = 3.0) -> None:
        """Kill every stand-in still running and reap it: demo guests end with the demo."""
        for guest in list(self._guests.values()):
            if not guest.watch.exited:
                guest.watch.send(signal.SIGKILL)
        for guest in list(self._guests.values()):
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                async with asyncio.timeout(timeout):
                    await guest.watch.wait()
                    if guest.proc is not None:
                        await guest.proc.wait()
            guest.watch.close()
        self._guests.clear()
        self.kill_all()

    def kill_all(self) -> None:
        """Last-resort sweep that needs no event loop: SIGKILL any stand-in still alive,
        checked by start time so a reused pid is never hit."""
        for pid, started in self.spawned.items():
            if same_process(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def alive(self) -> list[int]:
        return [pid for pid, started in self.spawned.items() if same_process(pid, started)]

    def _forget_exited(self) -> None:
        """Drop guests whose process has ended and been reaped (the story loops for as
        long as the app is open; their pidfds must not pile up)."""
        for pid, guest in list(self._guests.items()):
            if guest.watch.exited and (guest.proc is None or guest.proc.returncode is not None):
                guest.watch.close()
                del self._guests[pid]
                self.spawned.pop(pid, None)


async def _exits_within(watch: PidWatch, seconds: float) -> bool:
    """Wait up to `seconds`; True (early) if the process exits meanwhile."""
    done = asyncio.ensure_future(watch.wait())
    try:
        await asyncio.wait({done}, timeout=max(0.0, seconds))
    finally:
        done.cancel()
    return watch.exited


def _boot_lines(name: str) -> list[str]:
    return [
        f"[    0.000000] boxui demo guest {name}: a stand-in process, not a real VM",
        "[    0.104511] Booting the pretend kernel on a pretend CPU ...",
        "[    0.731906] Run /init as init process",
        "[    1.208337] dropbear: listening on port 22 (pretend)",
    ]


async def _console(path: Path, lines: Sequence[str], *, fresh: bool = False) -> None:
    """Append to the machine's console log, which the app's console pane tails."""
    def write() -> None:
        with contextlib.suppress(OSError), path.open("w" if fresh else "a") as fh:
            fh.writelines(f"{line}\n" for line in lines)

    await asyncio.to_thread(write)


class DemoBootFiles(BootFilesProvider):
    """Boot files for the demo driver, which boots nothing: no image build, no download."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir

    async def prepare(self, spec: MachineSpec, machine_dir: Path,
                      progress: ProgressFn | None = None) -> BootFiles:
        return BootFiles(Path("/demo/vmlinuz"), Path("/demo/initrd"), "boxui-demo")


def demo_accel(requested: str) -> AccelChoice:
    """Say "demo" rather than claim KVM or TCG: no accelerator is involved. Built without
    validation because `AccelChoice.accel` only admits real accelerators; everything
    downstream (the header, the ACCEL column, the runtime record) takes any string."""
    return AccelChoice.model_construct(
        accel=cast(Any, DEMO_ACCEL), reason="demo machines are stand-in processes, not VMs")


# --- the story ------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    name: str
    vcpus: int
    memory_mib: int
    boot_seconds: float
    fail_boot: str | None = None


CAST: tuple[Actor, ...] = (
    Actor("web-1", 2, 512, 2.5),
    Actor("web-2", 2, 512, 3.0),
    Actor("build-1", 4, 2048, 4.5),
    Actor("db-1", 2, 1024, 3.5),
    Actor("flaky-1", 1, 256, 2.0,
          fail_boot="flaky-1's guest panics while booting (a scripted demo failure, "
          "to show the failed state)"),
)

#: (who, what they do) while busy, and who gets drained and stopped, round by round
BUSY_TURNS = (("build-1", "running a build (make -j4)"),
              ("db-1", "running the nightly backup"))
DRAIN_TURNS = ("web-2", "web-1", "db-1")
RESTING = {InstanceState.STOPPED, InstanceState.FAILED, InstanceState.CRASHED}


class DemoDirector:
    """Plays the demo's story, round after round, through the engine and supervisor.

    One round (at speed 1, about 30 s): create missing machines one by one (each shows
    `creating` for a moment) and start every resting one (`booting`, then `ready`, and
    flaky-1 `failed`); one machine goes `busy` and back to `ready`; another is `draining`,
    then stopped by the supervisor (`stopping`, `stopped`). The next round boots the
    stopped and failed ones again. A person may press keys meanwhile, so every step may
    find the machine elsewhere than the script expects: such a step is skipped, never
    raised into the app.
    """

    def __init__(
        self,
        backend: EmbeddedBackend,
        driver: DemoDriver,
        *,
        speed: float = 1.0,
        cast: Sequence[Actor] = CAST,
        rounds: int | None = None,
    ) -> None:
        self.backend = backend
        self.driver = driver
        self.speed = speed
        self.cast = tuple(cast)
        self.rounds = rounds
        self.round = 0
        #: steps that did not happen: BoxuiErrors are expected (a user changed the
        #: machine), anything else is a bug the test looks for
        self.skipped: list[BaseException] = []

    async def run(self) -> None:
        await self.backend.ready.wait()
        while self.rounds is None or self.round < self.rounds:
            await self.play_round()
            self.round += 1

    async def play_round(self) -> None:
        starts = [asyncio.ensure_future(self._attempt(self._start(name)))
                  for name in self._names() if self._state(name) in RESTING]
        for actor in self.cast:
            if self._state(actor.name) is None and await self._attempt(self._create(actor)):
                starts.append(asyncio.ensure_future(self._attempt(self._start(actor.name))))
        await asyncio.gather(*starts)
        await self._pause(3)

        name, doing = BUSY_TURNS[self.round % len(BUSY_TURNS)]
        if await self._attempt(self._transition(name, Verb.BUSY, doing)):
            self.driver.set_load(name, busy=True)
            await self._pause(6)
            self.driver.set_load(name, busy=False)
            await self._attempt(self._transition(name, Verb.IDLE, "done: back to idle"))
        await self._pause(2)

        name = DRAIN_TURNS[self.round % len(DRAIN_TURNS)]
        if await self._attempt(self._transition(
                name, Verb.DRAINING, "draining: letting open connections finish "
                "before maintenance")):
            await self._pause(4)
            await self._attempt(self.backend.supervisor.stop_machine(name))
        await self._pause(4)

    # --- steps -----------------------------------------------------------------------

    async def _create(self, actor: Actor) -> None:
        """`Engine.create_machine` passes through `creating` in a millisecond; the story
        shows it for a moment, with the same steps in the same order (files first)."""
        engine = self.backend.engine
        spec = MachineSpec(name=actor.name, vcpus=actor.vcpus, memory_mib=actor.memory_mib)
        self.driver.plans.setdefault(actor.name, GuestPlan(actor.boot_seconds,
                                                           actor.fail_boot))
        await asyncio.to_thread(engine.store.create, spec)
        await engine.transition(actor.name, Verb.CREATING,
                                message="writing machine.toml and state.json")
        await self._pause(0.8)
        await engine.transition(actor.name, Verb.CREATED, message="ready to start")

    async def _start(self, name: str) -> None:
        await self.backend.supervisor.start_machine(name)

    async def _transition(self, name: str, verb: Verb, message: str) -> None:
        await self.backend.engine.transition(name, verb, message=message)

    async def _attempt(self, step: Awaitable[None]) -> bool:
        """Run one step; False if it did not happen. A BoxuiError (illegal transition,
        machine gone, scripted boot failure) is the story meeting reality; anything else
        is logged too, because the director must never take the app down."""
        try:
            await step
        except asyncio.CancelledError:
            raise
        except BoxuiError as exc:
            log.info("demo step skipped: %s", exc)
            self.skipped.append(exc)
            return False
        except Exception as exc:
            log.exception("demo step failed")
            self.skipped.append(exc)
            return False
        return True

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)

    def _names(self) -> list[str]:
        return [actor.name for actor in self.cast]

    def _state(self, name: str) -> InstanceState | None:
        try:
            return self.backend.engine.projection.state_of(name)
        except RuntimeError:  # the backend is gone: the app is closing
            return None


# --- the app --------------------------------------------------------------------------


class DemoApp(BoxuiApp):
    """BoxuiApp plus the director, and demo guests that end with the app.

    Note on handlers: Textual calls `on_<message>` of *every* class in the MRO (subclass
    first), so these handlers must not call `super()`: BoxuiApp's own `on_mount` and
    `on_backend_started` run right after them anyway, and calling them here would run
    them twice (two event feeds, two health feeds).
    """

    TITLE = "boxui demo"

    def __init__(self, backend: EmbeddedBackend, driver: DemoDriver, *,
                 speed: float = 1.0, rounds: int | None = None) -> None:
        super().__init__(backend)
        self.demo_driver = driver
        self.director = DemoDirector(backend, driver, speed=speed, rounds=rounds)

    def on_mount(self) -> None:
        # after BoxuiApp.on_mount, which sets the plain title
        self.call_later(self._label_demo)

    def _label_demo(self) -> None:
        self.query_one(MachineTable).border_title = (
            "machines · DEMO: stand-in processes, not VMs")

    def on_backend_started(self, _: BackendStarted) -> None:
        self.run_worker(self.director.run(), name="demo director", group="demo",
                        exit_on_error=False)
        self.notify("Sample machines now act out every state (creating, booting, ready, "
                    "busy, draining, stopping, stopped, failed). Keys work as usual; "
                    "q quits and ends the demo guests.", title="boxui demo", timeout=12)

    async def on_unmount(self) -> None:
        """Stop the director and the engine first (so killing the guests is not recorded
        as crashes), then kill every stand-in."""
        workers = [w for w in self.workers if w.group in ("demo", "backend")]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(Exception):  # cancelled or failed: it has ended
                async with asyncio.timeout(5):
                    await worker.wait()
        await self.demo_driver.shutdown()


# --- entry point ----------------------------------------------------------------------


def default_demo_home() -> Path:
    """Next to the normal state dir, never inside it: `~/.local/share/boxui-demo`."""
    home = default_home().expanduser().absolute()
    return home.with_name(home.name + "-demo")


def prepare_demo_home(home: Path) -> StateDir:
    """Start from an empty demo state dir. Only a dir the demo made itself (it holds the
    marker) is ever wiped; any other non-empty dir is refused, so `--home` pointing at a
    real state dir by mistake costs nothing."""
    home = home.expanduser().absolute()
    if home.is_symlink():
        raise StateDirError(f"refusing demo dir {home}: it is a symlink")
    if home.exists():
        if not home.is_dir():
            raise StateDirError(f"refusing demo dir {home}: not a directory")
        if (home / MARKER).is_file():
            holder = lock_holder(StateDir(home).lock_file)
            if holder is not None:
                raise StateDirError(f"demo dir {home} is in use by boxui pid {holder}")
            shutil.rmtree(home)
        elif any(home.iterdir()):
            raise StateDirError(
                f"refusing demo dir {home}: it is not empty and was not made by "
                f"`boxui demo` (no {MARKER} file); pick another --home")
    dirs = open_state_dir(home)
    (home / MARKER).write_text("made by `boxui demo`; wiped at every demo start\n")
    return dirs


def build_demo_app(home: Path, *, speed: float = 1.0, rounds: int | None = None) -> DemoApp:
    """The demo app over an embedded engine in `home` (already prepared)."""
    driver = DemoDriver({a.name: GuestPlan(a.boot_seconds, a.fail_boot) for a in CAST},
                        speed=speed)
    options = BackendOptions(home=home, driver_factory=lambda: driver,
                             boot_files_factory=DemoBootFiles, accel_for=demo_accel)
    return DemoApp(EmbeddedBackend(options), driver, speed=speed, rounds=rounds)


def run_demo(home: Path | None = None) -> None:
    if not sys.stdout.isatty():
        raise BoxuiError("the demo needs a terminal")
    dirs = prepare_demo_home(home or default_demo_home())
    app = build_demo_app(dirs.root)
    try:
        app.run()
    finally:
        app.demo_driver.kill_all()
