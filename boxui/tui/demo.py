"""`boxui demo`: the real app over sample machines that act out every lifecycle state.

A newcomer should see creating, booting, ready, busy, draining, stopping, stopped and
failed within a minute, without QEMU, KVM or a guest image. So the demo runs the real
engine, supervisor, health sampler and app, and swaps only the hypervisor: the stand-in
driver (`backend.drivers.standin`) launches a tiny stand-in process per machine instead
of QEMU. Pids, CPU and RSS health, pidfd exit watching and stop/kill are therefore all
real; only the guest is pretend.
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
import shutil
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from backend.drivers.qemu.accel import AccelChoice
from backend.drivers.standin import GuestPlan, StandInDriver
from backend.errors import BoxuiError, StateDirError
from backend.state.accelerator import AccelRequest
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir, default_home, open_state_dir
from backend.state.supervisor_lock import lock_holder
from backend.supervision.boot_files import BootFiles, BootFilesProvider, ProgressFn
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.messages import BackendStarted
from boxui.tui.recording import Recorder
from boxui.tui.widgets.machine_table import MachineTable

log = logging.getLogger("boxui.demo")

MARKER = ".boxui-demo"
DEMO_ACCEL: Final = "demo"

# --- the demo hypervisor --------------------------------------------------------------


def demo_driver(plans: Mapping[str, GuestPlan], *, speed: float = 1.0) -> StandInDriver:
    """The stand-in driver with lively guests: they burn some CPU, fill their console,
    take 1.5 s to power off, and exit with the app. A machine without a plan (e.g. one
    a user creates with `n` during the demo) boots in a random 2-5 s."""
    return StandInDriver(plans, lively=True, speed=speed, stop_seconds=1.5,
                         boot_range=(2.0, 5.0))


class DemoBootFiles(BootFilesProvider):
    """Boot files for the demo driver, which boots nothing: no image build, no download."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir

    async def prepare(self, spec: MachineSpec, machine_dir: Path,
                      progress: ProgressFn | None = None) -> BootFiles:
        return BootFiles(Path("/demo/vmlinuz"), Path("/demo/initrd"), "boxui-demo")


def demo_accel(requested: AccelRequest) -> AccelChoice:
    """Say "demo" rather than claim KVM or TCG: no accelerator is involved."""
    return AccelChoice(accel=DEMO_ACCEL, reason="demo machines are stand-in processes, not VMs")


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
STORY_NOTICE = ("Sample machines now act out every state (creating, booting, ready, busy, "
                "draining, stopping, stopped, failed). Keys work as usual; q quits and ends "
                "the demo guests.")


class Director(Protocol):
    """What plays a demo: the built-in story, or a script (`demo_script`)."""

    skipped: list[BaseException]

    async def run(self) -> None: ...


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
        driver: StandInDriver,
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

    def __init__(self, backend: EmbeddedBackend, driver: StandInDriver | None, *,
                 speed: float = 1.0, rounds: int | None = None,
                 director: Director | None = None, record: Path | None = None,
                 label: str = "DEMO: stand-in processes, not VMs",
                 notice: str = STORY_NOTICE) -> None:
        """`driver` None: real machines (`--script --real`), stopped when the app
        closes; `record`: write the session's events there (see `recording`)."""
        super().__init__(backend)
        self.demo_backend = backend
        self.demo_driver = driver
        if director is None:
            assert driver is not None, "the built-in story plays on stand-ins"
            director = DemoDirector(backend, driver, speed=speed, rounds=rounds)
        self.director = director
        self.recorder = Recorder(backend, record, title=label) if record else None
        self.label = label
        self.notice = notice

    def on_mount(self) -> None:
        # after BoxuiApp.on_mount, which sets the plain title
        self.call_later(self._label_demo)

    def _label_demo(self) -> None:
        recording = " · RECORDING" if self.recorder else ""
        self.query_one(MachineTable).border_title = f"machines · {self.label}{recording}"

    def on_backend_started(self, _: BackendStarted) -> None:
        self.run_worker(self.director.run(), name="demo director", group="demo",
                        exit_on_error=False)
        if self.recorder is not None:
            self.run_worker(self.recorder.run(), name="demo recorder", group="demo",
                            exit_on_error=False)
        self.notify(self.notice, title="boxui demo", timeout=12)

    async def on_unmount(self) -> None:
        """Stop the director and the engine first (so killing the guests is not recorded
        as crashes), then kill every stand-in. Real machines are stopped first, while
        the engine still runs: the demo's state dir is wiped at the next start."""
        for worker in [w for w in self.workers if w.group == "demo"]:
            worker.cancel()
        if self.demo_driver is None:
            await self._stop_real_machines()
        workers = [w for w in self.workers if w.group in ("demo", "backend")]
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(Exception):  # cancelled or failed: it has ended
                async with asyncio.timeout(5):
                    await worker.wait()
        if self.demo_driver is not None:
            await self.demo_driver.shutdown()

    async def action_quit(self) -> None:
        """Real machines are stopped before the app goes: once it is closing, its
        supervisor is gone and they would keep running (as real VMs do)."""
        if self.demo_driver is None:
            self.notify("stopping the demo's machines…", timeout=30)
            for worker in [w for w in self.workers if w.name == "demo director"]:
                worker.cancel()  # the recorder goes on: the stops belong in the recording
            await self._stop_real_machines()
        self.exit()

    async def _stop_real_machines(self) -> None:
        """As `x` would: a graceful stop, escalating on the machine's own deadlines."""
        try:
            supervisor = self.demo_backend.supervisor
        except RuntimeError:
            return  # the engine never started: nothing runs
        projection = supervisor.engine.projection
        running = [n for n in projection.names() if projection.state_of(n) in ACTIVE_STATES]
        results = await asyncio.gather(*(supervisor.stop_machine(n) for n in running),
                                       return_exceptions=True)
        for name, result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("demo machine %s was not stopped: %s", name, result)

    def kill_guests(self) -> None:
        """The last resort when the app ends abnormally: no stand-in outlives it."""
        if self.demo_driver is not None:
            self.demo_driver.kill_all()


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


def build_demo_app(home: Path, *, speed: float = 1.0, rounds: int | None = None,
                   record: Path | None = None) -> DemoApp:
    """The demo app over an embedded engine in `home` (already prepared)."""
    driver = demo_driver({a.name: GuestPlan(a.boot_seconds, a.fail_boot) for a in CAST},
                         speed=speed)
    options = BackendOptions(home=home, driver_factory=lambda: driver,
                             boot_files_factory=DemoBootFiles, accel_for=demo_accel)
    return DemoApp(EmbeddedBackend(options), driver, speed=speed, rounds=rounds,
                   record=record)
