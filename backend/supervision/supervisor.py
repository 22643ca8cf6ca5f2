"""The supervisor: starts, stops and watches machines, and restarts them by policy.

It is the only code that turns driver facts into lifecycle events. Each machine's
operations are serialised by a per-machine lock, so 20 concurrent starts produce one
hypervisor; a start that finds the machine already active returns instead of launching.
Long-lived tasks (exit watchers, restart timers) live in the supervisor's task group and
are cancelled with it; cancelling never stops a VM, because VMs must outlive boxui.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from backend.drivers.base import ExitInfo, GuestRamFile, HypervisorDriver, LaunchSpec, VmHandle
from backend.drivers.errors import DriverError, PortInUseError
from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.errors import BoxuiError, MachineNotFoundError
from backend.state.engine import Engine
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.boot_files import BootFiles, BootFilesProvider, ProgressFn
from backend.supervision.health import HealthSampler
from backend.supervision.restart_policy import RestartTracker, should_restart
from backend.supervision.restore_agent import AGENT_SOCKET, freshen_guest
from backend.templates.restore_plan import RestorePlan, install_snapshot_keys, plan_restore

log = logging.getLogger("boxui.supervisor")

DEFAULT_BOOT_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 20.0
PORT_ATTEMPTS = 5


class MachineBusyError(BoxuiError):
    code = "busy"


class Supervisor:
    def __init__(
        self,
        engine: Engine,
        driver: HypervisorDriver,
        boot_files: BootFilesProvider,
        *,
        accel_for: Callable[[str], AccelChoice] | None = None,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.driver = driver
        self.boot_files = boot_files
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self._accel_for = accel_for or _detect_accel
        self._clock = clock
        self.handles: dict[str, VmHandle] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._trackers: dict[str, RestartTracker] = {}
        self._restart_timers: dict[str, asyncio.Task[None]] = {}
        self._booting: set[str] = set()
        self._aborting: set[str] = set()
        self._stopping: set[str] = set()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.health = HealthSampler(driver, lambda: self.handles)

    # --- task ownership --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(
        self, *, recover: bool = True, sample_health: bool = False
    ) -> AsyncIterator[Supervisor]:
        """Own a task group for watchers, timers and health sampling; on exit let go of
        every VM (they keep running) and cancel the tasks."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if recover:
                    from backend.supervision.crash_recovery import recover_machines

                    await recover_machines(self)
                if sample_health:
                    self.spawn(self.health.run(), "health")
                yield self
            finally:
                await self.detach()
                self._group = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._group is None:
            coro.close()  # never to run: say so quietly, not as "never awaited" at exit
            raise RuntimeError("supervisor is not running")
        wrapped = _logged(coro, name)
        try:
            task = self._group.create_task(wrapped, name=name)
        except RuntimeError:  # the group is shutting down
            wrapped.close()
            coro.close()
            raise
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # a task cancelled before it ran never awaited `coro`: close it quietly
        task.add_done_callback(lambda _task: coro.close())
        return task

    async def detach(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for handle in list(self.handles.values()):
            with contextlib.suppress(Exception):
                await self.driver.close(handle)
        self.handles.clear()

    def tracker(self, name: str) -> RestartTracker:
        if name not in self._trackers:
            self._trackers[name] = RestartTracker(self._clock)
        return self._trackers[name]

    # --- start -----------------------------------------------------------------------

    async def start_machine(
        self, name: str, *, progress: ProgressFn | None = None, automatic: bool = False
    ) -> None:
        if not automatic:
            self._cancel_restart(name)
        async with self._locks[name]:
            state = self.engine.projection.state_of(name)
            if state is None:
                raise MachineNotFoundError(name)
            if state in ACTIVE_STATES:
                return  # already running or on its way: never a second hypervisor
            if state is InstanceState.BROKEN:
                raise BoxuiError(f"{name} is broken: {self.engine.machine(name).reason}")
            spec = self.engine.store.load_spec(name)
            if not automatic:
                self.tracker(name).reset()
            await self._boot(spec, progress)

    def restore_plan(self, spec: MachineSpec) -> RestorePlan | None:
        """How `spec` would start: a snapshot restore, or None for a cold boot. Raises
        `SnapshotMismatchError` (naming each difference) if its snapshot cannot serve it."""
        return plan_restore(self.engine.dirs, spec, self._accel_for(spec.accel),
                            self.driver.capabilities())

    async def _boot(self, spec: MachineSpec, progress: ProgressFn | None) -> None:
        name = spec.name
        choice = self._accel_for(spec.accel)
        accel = choice.accel
        # before any state changes: a mismatched snapshot is refused, not half-started
        plan = None
        if spec.template is not None:
            plan = await asyncio.to_thread(self.restore_plan, spec)
        boot_id = secrets.token_hex(6)
        port = pick_free_port(self._ports_in_use())
        forwards = self._forwards(spec, {port})

        def booting(record: RuntimeRecord) -> None:
            record.boot_id, record.ssh_port, record.accel = boot_id, port, accel
            record.pid = record.process_start_time = None
            record.ports = {str(guest): host for host, guest in forwards}
            record.restored_from = plan.label if plan else None
            record.rng_reseeded = record.rng_note = None
            record.clock_set = record.clock_note = None
            record.hostname_set = record.hostname_note = None

        how = f"restoring snapshot {plan.label}" if plan else "starting"
        try:
            await self.engine.transition(name, Verb.BOOTING, update=booting,
                                         message=f"{how} under {accel} ({choice.reason})")
        except BoxuiError as exc:
            if self.engine.projection.state_of(name) is InstanceState.BOOTING:
                # logged, but state.json could not be written (disk full): end the boot
                # now, or the machine would stay `booting` with nothing running
                await self._boot_failed(name, None, exc)
            raise
        self._booting.add(name)
        started = self._clock()
        handle: VmHandle | None = None
        note = ""
        try:
            directory = self.engine.dirs.machine_dir(name)
            if plan is not None:
                await asyncio.to_thread(install_snapshot_keys, plan, directory)
                files = BootFiles(plan.kernel, plan.initrd, "")
            else:
                files = await self.boot_files.prepare(spec, directory, progress)
            run_dir = await asyncio.to_thread(self.engine.dirs.ensure_run_dir, name)
            for attempt in range(PORT_ATTEMPTS):
                launch = LaunchSpec(
                    name=name, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                    kernel=files.kernel, initrd=files.initrd, append=files.append,
                    accel=accel, ssh_port=port, boot_id=boot_id, machine_dir=directory,
                    run_dir=run_dir, console_log=self.engine.dirs.console_log(name),
                    tsc_khz=choice.tsc_khz, disk_image=files.disk_image,
                    port_forwards=forwards,
                    restore_from=plan.snapshot_file if plan else None,
                    kernel_cmdline=plan.snapshot.boot_args if plan else None,
                    agent_socket=run_dir / AGENT_SOCKET if plan else None,
                    ram_file=GuestRamFile(plan.ram_file, shared=False)
                    if plan and plan.ram_file else None,
                )
                try:
                    handle = await self.driver.start(launch)
                    break
                except PortInUseError:
                    if attempt == PORT_ATTEMPTS - 1:
                        raise
                    port = pick_free_port(self._ports_in_use() | {port})
                    forwards = self._forwards(spec, {port})
                    await self.engine.update_record(name, _ports(port, forwards))
            assert handle is not None
            self.handles[name] = handle
            await self.engine.update_record(name, _process_identity(handle))
            self.spawn(self._watch(name, handle), f"watch-{name}")
            if progress is not None:
                progress("boot", f"pid {handle.pid}, waiting for the guest and SSH")
            if plan is None:
                await self.driver.wait_ready(handle, self.boot_timeout)
            else:
                # the agent answers as soon as the restored guest runs, while its
                # first SSH answer waits on code TCG must translate afresh: overlap them
                freshening = asyncio.ensure_future(
                    self._freshen(name, run_dir / AGENT_SOCKET, plan))
                try:
                    await self.driver.wait_ready(handle, self.boot_timeout)
                    note = await freshening
                finally:
                    freshening.cancel()
        except (BoxuiError, OSError) as exc:
            await self._boot_failed(name, handle, exc)
            if name in self._aborting:
                self._aborting.discard(name)
                return
            raise
        finally:
            self._booting.discard(name)
        await self.engine.transition(
            name, Verb.READY, message=f"ready in {self._clock() - started:.1f} s "
            f"(ssh on 127.0.0.1:{handle.ssh_port}){note}",
        )
        self.tracker(name).machine_up()

    async def _freshen(self, name: str, agent_socket: Path, plan: RestorePlan) -> str:
        """Fresh kernel RNG state, the host's time and its own hostname for a restored
        guest; a failure is reported, not fatal."""
        done = await freshen_guest(agent_socket, plan.snapshot.agent_protocol, name)

        def record(rec: RuntimeRecord) -> None:
            rec.rng_reseeded, rec.rng_note = done.rng_problem is None, done.rng_problem
            rec.clock_set, rec.clock_note = done.clock_problem is None, done.clock_problem
            rec.hostname_set, rec.hostname_note = done.name_problem is None, done.name_problem

        await self.engine.update_record(name, record)
        parts = [done_text if problem is None else f"{failed_text}: {problem}"
                 for done_text, failed_text, problem in (
                     ("guest RNG re-seeded", "guest RNG NOT re-seeded", done.rng_problem),
                     ("clock set", "clock NOT set", done.clock_problem),
                     (f"hostname set to {name}", "hostname NOT set", done.name_problem))]
        return f"; restored from {plan.label}, {', '.join(parts)}"

    async def _boot_failed(self, name: str, handle: VmHandle | None, exc: BaseException) -> None:
        if handle is not None:
            with contextlib.suppress(Exception):
                await self.driver.kill(handle)
        self.handles.pop(name, None)

        def clear(record: RuntimeRecord) -> None:
            record.pid = record.process_start_time = None

        if name in self._aborting:
            await self.engine.transition(name, Verb.STOPPING, message="boot aborted by stop")
            await self.engine.transition(name, Verb.STOPPED, update=clear,
                                         message="stopped before it was ready")
            return
        error = str(exc) or type(exc).__name__
        decision = self._plan_restart(name, failure=True)
        note = f"; {decision}" if decision else ""
        await self.engine.transition(name, Verb.FAILED, reason=error, update=clear,
                                     message=f"boot failed{note}")

    # --- watching --------------------------------------------------------------------

    async def _watch(self, name: str, handle: VmHandle) -> None:
        info = await self.driver.wait_exit(handle)
        if name in self._booting or name in self._stopping:
            return  # the start or stop in progress owns this exit
        if self.handles.get(name) is not handle:
            return
        async with self._locks[name]:
            if self.handles.get(name) is not handle:
                return
            await self._unexpected_exit(name, info)

    async def _unexpected_exit(self, name: str, info: ExitInfo) -> None:
        self.handles.pop(name, None)

        def clear(record: RuntimeRecord) -> None:
            record.pid = record.process_start_time = None

        self.tracker(name).machine_down()
        if not info.is_failure:
            await self.engine.transition(name, Verb.STOPPING, message=info.detail)
            decision = self._plan_restart(name, failure=False)
            note = f"; {decision}" if decision else ""
            await self.engine.transition(name, Verb.STOPPED, update=clear,
                                         message=f"{info.detail}{note}")
            return
        decision = self._plan_restart(name, failure=True)
        note = f"; {decision}" if decision else ""
        await self.engine.transition(name, Verb.CRASHED, reason=info.detail, update=clear,
                                     message=f"{info.detail}{note}")
        if decision is not None and decision.startswith("gave up"):
            await self.engine.transition(name, Verb.FAILED, reason=f"{decision}; last error: "
                                         f"{info.detail}", message=decision)

    async def machine_crashed(self, name: str, reason: str) -> None:
        """Crash recovery found the machine's process gone: record it and apply policy."""
        async with self._locks[name]:
            await self._unexpected_exit(name, ExitInfo("vanished", reason))

    # --- restart policy --------------------------------------------------------------

    def _plan_restart(self, name: str, *, failure: bool) -> str | None:
        """Decide (and schedule) an automatic restart; return words for the event."""
        try:
            policy = self.engine.store.load_spec(name).restart
        except BoxuiError:
            return None
        if not should_restart(policy, failure):
            return None
        decision = self.tracker(name).record_failure()
        if not decision.restart:
            return decision.describe()
        self._cancel_restart(name)
        self._restart_timers[name] = self.spawn(
            self._restart_later(name, decision.delay), f"restart-{name}")
        return decision.describe()

    async def _restart_later(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._restart_timers.pop(name, None)
        try:
            await self.start_machine(name, automatic=True)
        except BoxuiError as exc:
            log.warning("automatic restart of %s failed: %s", name, exc)

    def _cancel_restart(self, name: str) -> None:
        timer = self._restart_timers.pop(name, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    # --- stop, restart, delete -------------------------------------------------------

    async def stop_machine(self, name: str, *, force: bool = False,
                           note: str | None = None) -> None:
        self._cancel_restart(name)
        if name in self._booting:
            self._aborting.add(name)
            handle = self.handles.get(name)
            if handle is not None:
                await self.driver.kill(handle)
        async with self._locks[name]:
            state = self.engine.projection.state_of(name)
            if state is None:
                raise MachineNotFoundError(name)
            if state not in ACTIVE_STATES:
                return
            handle = self.handles.get(name)
            if handle is None:
                raise MachineBusyError(f"{name} is {state.value} but boxui holds no process "
                                       "for it; restart boxui to re-adopt it")
            if state is not InstanceState.STOPPING:
                # (already `stopping` only if an earlier stop failed half way, e.g. on a
                # full disk: this stop carries on from there)
                how = "killing" if force else "powering off"
                await self.engine.transition(name, Verb.STOPPING,
                                             message=f"{note}; {how}" if note else how)
            self._stopping.add(name)
            try:
                if force:
                    await self.driver.kill(handle)
                    info = ExitInfo("host-stop", "killed")
                else:
                    info = await self.driver.stop(handle, self.stop_timeout)
            finally:
                self._stopping.discard(name)
            self.handles.pop(name, None)
            self.tracker(name).machine_down()

            def clear(record: RuntimeRecord) -> None:
                record.pid = record.process_start_time = None

            await self.engine.transition(name, Verb.STOPPED, update=clear,
                                         message=f"stopped: {info.detail}")

    async def restart_machine(self, name: str, *, progress: ProgressFn | None = None) -> None:
        await self.stop_machine(name)
        await self.start_machine(name, progress=progress)

    async def delete_machine(self, name: str, *, force: bool = False) -> None:
        state = self.engine.projection.state_of(name)
        if state is None and not self.engine.store.exists(name):
            raise MachineNotFoundError(name)
        if state in ACTIVE_STATES:
            if not force:
                raise MachineBusyError(f"{name} is {state.value}; stop it first or use --force")
            await self.stop_machine(name, force=True)
        self._cancel_restart(name)
        async with self._locks[name]:
            await self.engine.delete_machine(name)
            self._trackers.pop(name, None)
            run_dir = self.engine.dirs.machine_run_dir(name)
            await asyncio.to_thread(_remove_tree, run_dir)

    def _ports_in_use(self) -> set[int]:
        return {h.ssh_port for h in self.handles.values()}

    def _forwards(self, spec: MachineSpec, taken: set[int]) -> tuple[tuple[int, int], ...]:
        """(host, guest) pairs for the spec's published ports; a port without a fixed
        host port gets a free one at each boot."""
        pairs = []
        avoid = self._ports_in_use() | taken
        for mapping in spec.ports:
            host = mapping.host or pick_free_port(avoid)
            avoid.add(host)
            pairs.append((host, mapping.guest))
        return tuple(pairs)


def _ports(ssh_port: int, forwards: tuple[tuple[int, int], ...]
           ) -> Callable[[RuntimeRecord], None]:
    def apply(record: RuntimeRecord) -> None:
        record.ssh_port = ssh_port
        record.ports = {str(guest): host for host, guest in forwards}

    return apply


def _process_identity(handle: VmHandle) -> Callable[[RuntimeRecord], None]:
    def apply(record: RuntimeRecord) -> None:
        record.pid = handle.pid
        record.process_start_time = handle.start_time
        record.ssh_port = handle.ssh_port

    return apply


def pick_free_port(avoid: set[int] | None = None) -> int:
    """A port on 127.0.0.1 that is free now; QEMU binds it moments later, and a lost
    race is caught as PortInUseError and retried with another port."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not avoid or port not in avoid:
            return port
    raise DriverError("no free port on 127.0.0.1")


def _detect_accel(requested: str) -> AccelChoice:
    return resolve_accel(requested)  # type: ignore[arg-type]


def _remove_tree(path: object) -> None:
    import shutil

    shutil.rmtree(str(path), ignore_errors=True)


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> Any:
    """Background tasks never take the task group down: one error handler logs them."""
    try:
        return await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # one line for whoever reads stderr (the CLI, the daemon's log); the traceback
        # only when debugging is on
        text = str(exc) if isinstance(exc, BoxuiError) else f"{type(exc).__name__}: {exc}"
        log.error("background task %s failed: %s", name, text)
        log.debug("background task %s failed", name, exc_info=True)
        return None
