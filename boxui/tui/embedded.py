"""The app's backend when no daemon runs: the engine and supervisor in the app's loop.

Closing the app leaves VMs running. While it runs it also serves the daemon's control API
(unless told not to), so the CLI and scripts act through it rather than find the state
dir locked. When it closes while machines run, it hands them to a background daemon
(`hand_over`): its supervisor's tasks end (the VMs keep running), the daemon is started
with the app's locked lock file inherited and takes that lock over, re-adopts the
machines and answers, and only then does the app let go; so at no moment do two
supervise or none hold the lock. If the app crashes instead, the kernel drops its lock
and the next supervisor re-adopts the machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from backend.api.context import ApiContext
from backend.api.server import serve_api
from backend.drivers.base import HypervisorDriver
from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.drivers.qemu.driver import QemuDriver
from backend.errors import BoxuiError
from backend.images.builder import build_image
from backend.images.catalog import ImageListing, catalog
from backend.images.progress import ImageProgress
from backend.images.store import users_of
from backend.services.manager import ServiceManager
from backend.services.scale_models import ServiceView
from backend.state.engine import Engine
from backend.state.event_bus import Subscription
from backend.state.event_log import read_log
from backend.state.events import CloudEvent
from backend.state.lifecycle import ACTIVE_STATES
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from backend.state.port_forward_view import ForwardView
from backend.state.port_mapping import PortMapping, Protocol
from backend.state.state_dir import StateDir, default_home, open_state_dir
from backend.state.supervisor_lock import SupervisorLock
from backend.supervision.boot_files import DefaultBootFiles, ProgressFn
from backend.supervision.command_recovery import recover_commands
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.file_copy import Progress as CopyProgress
from backend.supervision.health import HealthHistory, HealthSubscription
from backend.supervision.machine_disk import DiskUsage, check_disk_request, disk_usage
from backend.supervision.machine_exec import ExecOutput, MachineExec
from backend.supervision.port_forwards import add_forward, remove_forward
from backend.supervision.provisioning import start_provisioning
from backend.supervision.supervisor import Supervisor
from boxui.daemon.spawn import hand_over
from boxui.daemon.start_lock import try_start_lock
from boxui.tui.backend import BackendOptions, image_progress_text
from boxui.tui.copying import copy_over_ssh
from boxui.tui.forwards import apply_forwards


class EmbeddedBackend:
    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()
        self._home = (self.options.home or default_home()).expanduser().absolute()
        self._engine: Engine | None = None
        self._supervisor: Supervisor | None = None
        self._services: ServiceManager | None = None
        self._exec: MachineExec | None = None
        #: set when the app closed with machines running: the lock, still held for the
        #: daemon `hand_over` starts, and the start lock, held so that no CLI starts one
        self._handing_over: tuple[StateDir, SupervisorLock, int | None] | None = None
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Own the engine and supervisor until cancelled (the app is closing)."""
        dirs = await asyncio.to_thread(open_state_dir, self.options.home)
        lock = SupervisorLock(dirs.lock_file)
        lock.acquire()
        engine = await Engine.open(dirs.root, lock=lock)
        try:
            opts = self.options
            driver: HypervisorDriver = (opts.driver_factory or QemuDriver)()
            boot_files = (opts.boot_files_factory or DefaultBootFiles)(engine.dirs.images)
            supervisor = Supervisor(engine, driver, boot_files, accel_for=opts.accel_for,
                                    clock=opts.clock or time.monotonic)
            supervisor.health.interval = opts.health_interval
            async with supervisor.running(recover=recover_machines,
                                          sample_health=opts.sample_health):
                self._engine, self._supervisor = engine, supervisor
                if opts.serve_api:
                    ctx = _api_context(supervisor)
                    self._services, self._exec = ctx.services, ctx.exec
                    supervisor.spawn(_serve_api(ctx), "api")
                self.ready.set()
                try:
                    await asyncio.Event().wait()  # until cancelled
                finally:
                    self._keep_lock_if_running(engine, lock)
        finally:
            self._engine = self._supervisor = None
            self._exec = None
            if self._handing_over is None:
                await engine.close()

    def _keep_lock_if_running(self, engine: Engine, lock: SupervisorLock) -> None:
        """Closing with machines running: keep the lock for `hand_over`, and take the
        start lock before the API stops, so that a CLI arriving meanwhile waits for the
        daemon instead of finding the state dir locked with nobody serving it."""
        projection = engine.projection
        if self.options.hand_over_on_close and any(
                projection.state_of(name) in ACTIVE_STATES for name in projection.names()):
            self._handing_over = (engine.dirs, lock, try_start_lock(engine.dirs))

    def hand_over(self) -> str | None:
        """After `run` ended: pass the lock and the running machines to a background
        daemon and say so; None when no machine ran (the lock is released already).
        Raises `BoxuiError` when that fails; the machines keep running, and the next
        supervisor re-adopts them."""
        if self._handing_over is None:
            return None
        dirs, lock, start_fd = self._handing_over
        self._handing_over = None
        try:
            assert lock.fd is not None
            pid, running = hand_over(dirs, lock.fd, self.options.daemon_command)
        except BoxuiError as exc:
            raise BoxuiError(f"could not hand the running machines to a background daemon "
                             f"({exc}); they keep running, and the next boxui re-adopts "
                             "them") from None
        finally:
            lock.release()
            if start_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(start_fd)
        plural = "" if running == 1 else "s"
        return f"boxui daemon pid {pid} now supervises {running} running machine{plural}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("backend is not running")
        return self._engine

    @property
    def supervisor(self) -> Supervisor:
        if self._supervisor is None:
            raise RuntimeError("backend is not running")
        return self._supervisor

    @property
    def service_manager(self) -> ServiceManager | None:
        """The services of the API this app serves (None: it serves none)."""
        return self._services

    @property
    def home(self) -> Path:
        return self._home

    @property
    def startup_notes(self) -> list[str]:
        return self.engine.startup_notes

    # --- reading ---------------------------------------------------------------------

    def machines(self) -> list[LoadedMachine]:
        return self.engine.machines()

    def machine(self, name: str) -> LoadedMachine:
        return self.engine.machine(name)

    def subscribe_events(self, maxsize: int = 4096) -> Subscription:
        return self.engine.subscribe(maxsize=maxsize)

    def subscribe_health(self, maxsize: int = 4096) -> HealthSubscription:
        return self.supervisor.health.subscribe(maxsize=maxsize)

    @property
    def health_history(self) -> HealthHistory:
        return self.supervisor.health.history

    def accel(self) -> AccelChoice:
        if self.options.accel_for is not None:
            return self.options.accel_for("auto")
        return resolve_accel("auto")

    def spec_path(self, name: str) -> Path:
        return self.engine.dirs.spec_path(name)

    def console_log(self, name: str) -> Path:
        return self.engine.dirs.console_log(name)

    def machines_dir(self) -> Path:
        return self.engine.dirs.machines

    def load_spec(self, name: str) -> MachineSpec:
        return self.engine.store.load_spec(name)

    def recent_events(self, limit: int) -> list[CloudEvent]:
        return list(read_log(self.engine.dirs.event_log).events[-limit:])

    async def event_history(self, limit: int) -> list[CloudEvent]:
        path = self.engine.dirs.event_log
        scan = await asyncio.to_thread(read_log, path)
        return list(scan.events[-limit:])

    # --- changing --------------------------------------------------------------------

    async def images(self) -> list[ImageListing]:
        engine = self.engine
        return await asyncio.to_thread(lambda: catalog(engine.dirs, engine.machines()))

    def disk_usage(self, name: str) -> DiskUsage | None:
        return disk_usage(self.engine.dirs.machine_dir(name))

    async def create(self, spec: MachineSpec, *, start: bool = True,
                     progress: ProgressFn | None = None, mounts: Sequence[str] = (),
                     ports: Sequence[str] = ()) -> None:
        spec = apply_forwards(spec, list(mounts), list(ports))
        if spec.image is not None:  # as the API does: refused before the machine exists
            await asyncio.to_thread(check_disk_request, self.engine.dirs.images, spec)
        await self.engine.create_machine(spec)
        if start:
            await self.supervisor.start_machine(spec.name, progress=progress)

    async def start(self, name: str, *, progress: ProgressFn | None = None) -> None:
        await self.supervisor.start_machine(name, progress=progress)

    async def stop(self, name: str) -> None:
        await self.supervisor.stop_machine(name)

    async def restart(self, name: str, *, progress: ProgressFn | None = None) -> None:
        await self.supervisor.restart_machine(name, progress=progress)

    async def delete(self, name: str) -> None:
        await self.supervisor.delete_machine(name, force=True)

    async def services(self) -> list[ServiceView]:
        return await self._services.views() if self._services is not None else []

    async def build_image(self, name: str, progress: ProgressFn | None = None) -> None:
        engine = self.engine

        def report(event: ImageProgress) -> None:
            if progress is not None:
                progress(event.step, image_progress_text(event))

        await build_image(engine.dirs, name, report,
                          users=lambda image: users_of(engine.machines(), image))

    async def add_port(self, name: str, mapping: PortMapping) -> ForwardView:
        return await add_forward(self.supervisor, name, mapping)

    async def remove_port(self, name: str, guest: int, protocol: Protocol) -> ForwardView:
        return await remove_forward(self.supervisor, name, guest, protocol)

    async def exec(self, name: str, argv: list[str], *,
                   timeout: float | None = None) -> ExecOutput:
        if self._exec is None:  # not serving the API: an exec of its own, made once
            self._exec = MachineExec(self.engine)
        _record, output = await self._exec.run(name, argv, timeout=timeout)
        return output

    async def copy(self, name: str, source: str, target: str, *, recursive: bool,
                   progress: CopyProgress | None = None) -> None:
        await copy_over_ssh(self._home, name, source, target, recursive=recursive,
                            progress=progress)





def _api_context(supervisor: Supervisor) -> ApiContext:
    machine_exec = MachineExec(supervisor.engine)
    supervisor.liveness.runner = machine_exec.runner  # probes share its connections
    supervisor.spawn(machine_exec.keep_connections(), "ssh-connections")
    supervisor.spawn(recover_commands(machine_exec), "command-recovery")
    return ApiContext(supervisor, machine_exec, ServiceManager(supervisor, machine_exec),
                      provisioner=start_provisioning(supervisor, machine_exec.pool))


async def _serve_api(ctx: ApiContext) -> None:
    """The same API (and services) as `boxui daemon`, until the app closes (cancellation
    ends it and removes the socket)."""
    await ctx.services.start()
    await ctx.pools.start()
    await ctx.cells.recover()  # cells a dead supervisor left: finished, machines deleted
    await serve_api(ctx, asyncio.Event())
