"""The supervisor: starts, stops and watches machines, and restarts them by policy.

It is the only code that turns driver facts into lifecycle events. Each machine's
operations are serialised by a per-machine lock, so 20 concurrent starts produce one
hypervisor. A boot runs as the supervisor's own task with one outcome every start of that
machine awaits (the one that began it, later ones, and starts of a boot re-adopted after a
crash), so a start returns when the machine is ready or fails with the boot's error, and a
caller that goes away never cuts a boot short.
Long-lived tasks (exit watchers, restart timers) live in the supervisor's task group and
are cancelled with it; cancelling never stops a VM, because VMs must outlive boxui.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from backend.drivers.base import ExitInfo, HypervisorDriver, StopTimeouts, VmHandle
from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.errors import BoxuiError, MachineNotFoundError
from backend.guest.machine_seed import release_boot_initrd
from backend.state.accelerator import AccelRequest
from backend.state.engine import Engine
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.state.mount_spec import check_mount_sources
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.adoption import Adoption
from backend.supervision.boot_files import BootFiles, BootFilesProvider, ProgressFn
from backend.supervision.boot_plan import (
    BootPlan,
    Forwards,
    RecordUpdate,
    clear_process,
    ports_record,
    process_record,
)
from backend.supervision.claimed_vm import ClaimedVm
from backend.supervision.health import HealthSampler
from backend.supervision.heartbeat import Heartbeat
from backend.supervision.interruptions import UNRESPONSIVE_GRACE, Interruptions
from backend.supervision.liveness import LivenessProbes
from backend.supervision.machine_disk import ensure_disk
from backend.supervision.orphans import (
    ORPHAN_KILLED_TYPE,
    Orphan,
    kill_process,
    orphan_event,
    scan,
)
from backend.supervision.ports import pick_free_port, start_on_free_port
from backend.supervision.restart_policy import RestartTracker, should_restart
from backend.supervision.restore_agent import AGENT_SOCKET, freshen_guest
from backend.supervision.ssh_config_file import keep_current as keep_ssh_config_current
from backend.templates.restore_plan import RestorePlan, install_snapshot_keys, plan_restore

log = logging.getLogger("boxui.supervisor")

DEFAULT_BOOT_TIMEOUT = 120.0
#: a Debian image boots systemd under TCG: about a minute on an idle host here, several
#: on a busy one; failing a boot that would have finished helps no one
OS_IMAGE_BOOT_TIMEOUT = 600.0
#: resting states whose QEMU may still live: one boxui could not re-adopt (its QMP hung),
#: or gave up on. A machine boxui stopped itself saw its process exit (its pidfd said so)
#: and is not scanned for again (a scan of /proc costs ms; `boxui gc` finds the rest).
MAY_LINGER = frozenset({InstanceState.CRASHED, InstanceState.FAILED, InstanceState.BROKEN})

#: what a supervisor runs once it owns its task group and before it yields: crash
#: recovery, which re-adopts the machines a previous boxui left running
Recovery = Callable[["Supervisor"], Awaitable[None]]
#: a warm pool's claim for a machine about to start: a running guest restored from the
#: machine's template revision, or None to boot as usual (`backend.pools` sets it)
Claim = Callable[[MachineSpec], Awaitable[ClaimedVm | None]]


class MachineBusyError(BoxuiError):
    code = "busy"


class Supervisor(Interruptions, Adoption):
    def __init__(
        self,
        engine: Engine,
        driver: HypervisorDriver,
        boot_files: BootFilesProvider,
        *,
        accel_for: Callable[[AccelRequest], AccelChoice] | None = None,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.driver = driver
        self.boot_files = boot_files
        self.boot_timeout = boot_timeout
        self._accel_for = accel_for or _detect_accel
        self._clock = clock
        self.handles: dict[str, VmHandle] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._trackers: dict[str, RestartTracker] = {}
        self._restart_timers: dict[str, asyncio.Task[None]] = {}
        self._booting: set[str] = set()
        #: the outcome of each boot in progress (started here or re-adopted), which every
        #: start of that machine awaits; see `_boot_task`
        self._boot_outcomes: dict[str, asyncio.Future[None]] = {}
        self._aborting: set[str] = set()
        self._stopping: set[str] = set()
        #: graceful stops in progress, each resolved once its `stopped` is recorded: a
        #: `stop --force` kills under them and waits for that (see `_overtake`)
        self._graceful: dict[str, asyncio.Future[None]] = {}
        self._overtaken: set[str] = set()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.health = HealthSampler(driver, lambda: self.handles)
        self.heartbeat = Heartbeat(driver, lambda: self.handles, self._heartbeat_watches,
                                   self._qmp_silent, self._qmp_answered)
        #: guest liveness probes; whoever runs `exec` sets `liveness.runner` to share it
        self.liveness = LivenessProbes(engine, lambda: self.handles, self.spawn, self._probed)
        self.health.ssh_check = self.liveness.ssh_answers  # kept connection: no console noise
        self.unresponsive_grace = UNRESPONSIVE_GRACE
        self._silent_since = {}
        self._killing_hung = set()
        self.claim: Claim | None = None

    # --- task ownership --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(
        self, *, recover: Recovery | None, sample_health: bool = False
    ) -> AsyncIterator[Supervisor]:
        """Own a task group for watchers, timers and health sampling; on exit let go of
        every VM (they keep running) and cancel the tasks.

        `recover` (`crash_recovery.recover_machines`, passed in because recovery is
        built on this class) runs before this yields, so before anything can start a
        machine: a machine a previous boxui left running is adopted, never started
        twice. None only where nothing can need re-adopting, or a test races it."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if recover is not None:
                    await recover(self)
                self.spawn(self.heartbeat.run(), "heartbeat")
                self.spawn(self.liveness.run(), "liveness")
                self.spawn(keep_ssh_config_current(self.engine), "ssh-config")
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

    def machine_lock(self, name: str) -> asyncio.Lock:
        """Held by every start, stop and delete of `name`: a change that needs the
        machine stopped (growing its disk) holds it too, so no boot begins halfway."""
        return self._locks[name]

    async def start_machine(
        self, name: str, *, progress: ProgressFn | None = None, automatic: bool = False
    ) -> None:
        """Return once `name` is ready (or was already running); raise the boot's error
        if it fails, also when this start only joined a boot already in progress."""
        if not automatic:
            self._cancel_restart(name)
        outcome = self._boot_outcomes.get(name)
        if outcome is None:
            outcome = self._boot_task(name, self._start_under_lock(name, progress, automatic))
        # shielded: a caller that gives up (a closed connection, a cancelled task) stops
        # waiting, while the boot goes on to ready or failed for everyone else
        await asyncio.shield(outcome)

    async def _start_under_lock(self, name: str, progress: ProgressFn | None,
                                automatic: bool) -> None:
        async with self._locks[name]:
            state = self.engine.projection.state_of(name)
            if state is None:
                raise MachineNotFoundError(name)
            if state in ACTIVE_STATES:
                return  # already running or on its way: never a second hypervisor
            if state is InstanceState.BROKEN:
                raise BoxuiError(f"{name} is broken: {self.engine.machine(name).reason}")
            spec = await asyncio.to_thread(self.engine.store.load_spec, name)
            if not automatic:
                self.tracker(name).reset()
            claimed = await self.claim(spec) if self.claim and spec.template else None
            if claimed is not None:
                try:
                    await self._take_claimed(spec, claimed)
                finally:
                    claimed.settled()
                return
            await self._boot(spec, progress)

    def _boot_task(self, name: str, body: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run `body` (a boot) as the supervisor's task; its result or error is the
        returned outcome, which stays registered until the boot ends so that a start
        meanwhile awaits it instead of returning early on a machine still `booting`."""
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # a failure nobody awaited was reported through the machine's events already
        outcome.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._boot_outcomes[name] = outcome

        async def run() -> None:
            try:
                await body
            except asyncio.CancelledError:
                outcome.cancel()  # the supervisor is shutting down
                raise
            except Exception as exc:  # every error of a boot is its waiters' to report
                if not outcome.done():
                    outcome.set_exception(exc)
            else:
                if not outcome.done():
                    outcome.set_result(None)
            finally:
                if self._boot_outcomes.get(name) is outcome:
                    del self._boot_outcomes[name]

        try:
            self.spawn(run(), f"boot-{name}")
        except BaseException:
            del self._boot_outcomes[name]
            body.close()
            raise
        return outcome

    def restore_plan(self, spec: MachineSpec) -> RestorePlan | None:
        """How `spec` would start: a snapshot restore, or None for a cold boot. Raises
        `SnapshotMismatchError` (naming each difference) if its snapshot cannot serve it."""
        return plan_restore(self.engine.dirs, spec, self._accel_for(spec.accel),
                            self.driver.capabilities())

    def accel(self, requested: AccelRequest = "auto") -> AccelChoice:
        """The accelerator a machine asking for `requested` gets here; a template build
        under this supervisor boots with it too, so its snapshots restore here."""
        return self._accel_for(requested)

    async def _boot(self, spec: MachineSpec, progress: ProgressFn | None) -> None:
        name = spec.name
        boot = await self._plan_boot(spec)
        await self._enter_booting(boot)
        self._booting.add(name)
        started = self._clock()
        handle: VmHandle | None = None
        note, freshened = "", None
        try:
            files = await self._files_for(boot, progress)
            run_dir = await asyncio.to_thread(self.engine.dirs.ensure_run_dir, name)
            handle = await self._launch(boot, files, run_dir)
            await self._hold(name, handle, process_record(handle))
            if name in self._aborting:  # the stop came before there was a process to kill
                raise BoxuiError("stopped before it was ready")
            note, freshened = await self._until_ready(boot, handle, run_dir, progress)
            if files.single_use:
                await asyncio.to_thread(release_boot_initrd, files.initrd)
        except (BoxuiError, OSError) as exc:
            await self._boot_failed(name, handle, exc)
            if name in self._aborting:
                return
            raise
        finally:
            self._boot_ended(name)
        await self.engine.transition(
            name, Verb.READY, update=freshened, message=f"ready in {self._clock() - started:.1f} s "
            f"(ssh on 127.0.0.1:{handle.ssh_port}){note}",
        )
        self.tracker(name).machine_up()

    async def _take_claimed(self, spec: MachineSpec, vm: ClaimedVm) -> None:
        """Make a claimed warm pool member this machine: its files and sockets moved in,
        its record and events the machine's own, forwards added through the hypervisor,
        then the restore's freshening (RNG, clock, hostname) as for any restore."""
        name, dirs, started = spec.name, self.engine.dirs, self._clock()
        run_dir = dirs.machine_run_dir(name)
        try:
            await asyncio.to_thread(vm.move_into, dirs.machine_dir(name), run_dir)
        except OSError:
            await self.driver.kill(vm.handle)  # nothing records it as anyone's now
            raise
        handle = self.driver.renamed(vm.handle, name, dirs.console_log(name),
                                     run_dir / vm.handle.qmp_socket.name)
        forwards = self._forwards(spec, {handle.ssh_port})
        self._booting.add(name)
        # the guest's freshening needs only its agent socket, moved in above: it overlaps
        # the claim's record writes, rather than waiting for them
        freshening = asyncio.ensure_future(
            self._freshen(name, run_dir / AGENT_SOCKET, vm.restore))
        recorded = False
        try:
            try:
                await self.engine.transition(
                    name, Verb.BOOTING, update=vm.booting_record(handle, forwards),
                    message=f"claimed warm pool member {vm.member} ({vm.restore.label})")
                recorded = True
                self.handles[name] = handle
                self.spawn(self._watch(name, handle), f"watch-{name}")
                for host, guest, protocol in forwards:
                    await self.driver.add_forward(handle, protocol, host, guest)
                note, freshened = await freshening
            except (BoxuiError, OSError) as exc:
                await self._boot_failed(name, handle, exc)
                if name in self._aborting:
                    return  # stopped meanwhile, as asked
                raise
            finally:
                freshening.cancel()
                self._boot_ended(name)
            await self.engine.transition(
                name, Verb.READY, update=freshened,
                message=f"ready in {self._clock() - started:.3f} s, claimed from the warm "
                f"pool (ssh on 127.0.0.1:{handle.ssh_port}){note}")
            self.tracker(name).machine_up()
        finally:
            if recorded:  # the claim is the machine's record now, whatever came after:
                # the member's own bookkeeping goes, off the claim's path to ready
                await asyncio.to_thread(vm.release)

    async def _plan_boot(self, spec: MachineSpec) -> BootPlan:
        """Everything decided before any state changes, so that a mismatched snapshot
        is refused rather than half-started."""
        choice = self._accel_for(spec.accel)
        await asyncio.to_thread(check_mount_sources, spec.name, spec.mounts)
        restore = None
        if spec.template is not None:
            restore = await asyncio.to_thread(self.restore_plan, spec)
        boot_id = secrets.token_hex(6)
        port = pick_free_port(self._ports_in_use())
        return BootPlan(spec, choice, restore, boot_id, port, self._forwards(spec, {port}))

    async def _enter_booting(self, boot: BootPlan) -> None:
        name, restore = boot.spec.name, boot.restore
        how = f"restoring snapshot {restore.label}" if restore else "starting"
        try:
            await self.engine.transition(
                name, Verb.BOOTING, update=boot.booting_record(),
                message=f"{how} under {boot.choice.accel} ({boot.choice.reason})")
        except BoxuiError as exc:
            if self.engine.projection.state_of(name) is InstanceState.BOOTING:
                # logged, but state.json could not be written (disk full): end the boot
                # now, or the machine would stay `booting` with nothing running
                await self._boot_failed(name, None, exc)
            raise

    async def _files_for(self, boot: BootPlan, progress: ProgressFn | None) -> BootFiles:
        """A restore boots the snapshot's own kernel and initrd, with the keys it was
        saved with; a cold boot asks the boot files provider."""
        directory = self.engine.dirs.machine_dir(boot.spec.name)
        if boot.restore is None:
            return await self.boot_files.prepare(boot.spec, directory, progress)
        await asyncio.to_thread(install_snapshot_keys, boot.restore, directory)
        disk = None
        if boot.restore.disk is not None:  # an overlay of its own on the frozen disk
            disk = await asyncio.to_thread(ensure_disk, directory, boot.restore.disk, None,
                                           "qcow2")
        return BootFiles(boot.restore.kernel, boot.restore.initrd, "", disk)

    async def _launch(self, boot: BootPlan, files: BootFiles, run_dir: Path) -> VmHandle:
        async def moved(port: int) -> None:
            boot.forwards = self._forwards(boot.spec, {port})
            await self.engine.update_record(boot.spec.name, ports_record(port, boot.forwards))

        return await start_on_free_port(
            self.driver, lambda port: boot.launch_spec(self.engine.dirs, files, run_dir, port),
            boot.ssh_port, avoid=self._ports_in_use, moved=moved)

    def _spec_or_none(self, name: str) -> MachineSpec | None:
        try:
            return self.engine.store.load_spec(name)
        except (BoxuiError, OSError):
            return None

    def boot_timeout_of(self, spec: MachineSpec | None) -> float:
        """How long a boot may take to ready: longer for a machine that boots an OS image."""
        if spec is not None and spec.image is not None:
            return max(self.boot_timeout, OS_IMAGE_BOOT_TIMEOUT)
        return self.boot_timeout

    async def _until_ready(self, boot: BootPlan, handle: VmHandle, run_dir: Path,
                           progress: ProgressFn | None) -> tuple[str, RecordUpdate | None]:
        """Wait for the guest to answer SSH; returns what the ready event adds (how a
        restored guest was freshened, and the record's note of it)."""
        if progress is not None:
            progress("boot", f"pid {handle.pid}, waiting for the guest and SSH")
        if boot.restore is None:
            await self.driver.wait_ready(handle, self.boot_timeout_of(boot.spec))
            return "", None
        # the agent answers as soon as the restored guest runs, while its first SSH
        # answer waits on code TCG must translate afresh: overlap them
        freshening = asyncio.ensure_future(
            self._freshen(boot.spec.name, run_dir / AGENT_SOCKET, boot.restore))
        try:  # a restored OS image answers SSH by forking a cold sshd: as slow as a boot
            await self.driver.wait_ready(handle, self.boot_timeout_of(boot.spec))
            return await freshening
        finally:
            freshening.cancel()

    async def _freshen(self, name: str, agent_socket: Path,
                       plan: RestorePlan) -> tuple[str, RecordUpdate]:
        """Fresh kernel RNG state, the host's time and its own hostname for a restored
        guest; a failure is reported, not fatal. The record's note of it is returned for
        the ready event to write, so a restore pays for one record write, not two."""
        done = await freshen_guest(agent_socket, plan.snapshot.agent_protocol, name)

        def record(rec: RuntimeRecord) -> None:
            rec.rng_reseeded, rec.rng_note = done.rng_problem is None, done.rng_problem
            rec.clock_set, rec.clock_note = done.clock_problem is None, done.clock_problem
            rec.hostname_set, rec.hostname_note = done.name_problem is None, done.name_problem

        parts = [done_text if problem is None else f"{failed_text}: {problem}"
                 for done_text, failed_text, problem in (
                     ("guest RNG re-seeded", "guest RNG NOT re-seeded", done.rng_problem),
                     ("clock set", "clock NOT set", done.clock_problem),
                     (f"hostname set to {name}", "hostname NOT set", done.name_problem))]
        return f"; restored from {plan.label}, {', '.join(parts)}", record

    async def _boot_failed(self, name: str, handle: VmHandle | None, exc: BaseException) -> None:
        if handle is not None:
            with contextlib.suppress(Exception):
                await self.driver.kill(handle)
        self.handles.pop(name, None)
        if name in self._aborting:
            await self.engine.transition(name, Verb.STOPPING, message="boot aborted by stop")
            await self.engine.transition(name, Verb.STOPPED, update=clear_process,
                                         message="stopped before it was ready")
            return
        error = str(exc) or type(exc).__name__
        decision = await self._plan_restart(name, failure=True)
        note = f"; {decision}" if decision else ""
        await self.engine.transition(name, Verb.FAILED, reason=error, update=clear_process,
                                     message=f"boot failed{note}")

    # --- watching --------------------------------------------------------------------

    async def _hold(self, name: str, handle: VmHandle, identity: RecordUpdate) -> None:
        """From here on the machine's process is this handle: recorded, and watched."""
        self.handles[name] = handle
        await self.engine.update_record(name, identity)
        self.spawn(self._watch(name, handle), f"watch-{name}")

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
        self.tracker(name).machine_down()
        if not info.is_failure:
            await self.engine.transition(name, Verb.STOPPING, message=info.detail)
            decision = await self._plan_restart(name, failure=False)
            note = f"; {decision}" if decision else ""
            await self.engine.transition(name, Verb.STOPPED, update=clear_process,
                                         message=f"{info.detail}{note}")
            return
        decision = await self._plan_restart(name, failure=True)
        note = f"; {decision}" if decision else ""
        await self.engine.transition(name, Verb.CRASHED, reason=info.detail, update=clear_process,
                                     message=f"{info.detail}{note}")
        if decision is not None and decision.startswith("gave up"):
            await self.engine.transition(name, Verb.FAILED, reason=f"{decision}; last error: "
                                         f"{info.detail}", message=decision)

    # --- restart policy --------------------------------------------------------------

    async def _plan_restart(self, name: str, *, failure: bool) -> str | None:
        """Decide (and schedule) an automatic restart; return words for the event."""
        try:
            policy = (await asyncio.to_thread(self.engine.store.load_spec, name)).restart
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
                           note: str | None = None, fail_reason: str | None = None) -> None:
        """Stop `name` and return once its process is gone: a graceful stop escalates on
        the machine's `[stop]` deadlines; `force` kills at once, also under a graceful
        stop already in progress, which then ends as killed. With `fail_reason` (a
        provision script failed) it ends `failed` with that reason, not `stopped`."""
        self._cancel_restart(name)
        if name in self._booting:
            self._aborting.add(name)
            handle = self.handles.get(name)
            if handle is not None:
                await self.driver.kill(handle)
        if force and name in self._graceful:
            await self._overtake(name)
            return
        async with self._locks[name]:
            state = self.engine.projection.state_of(name)
            if state is None:
                raise MachineNotFoundError(name)
            if state not in ACTIVE_STATES:
                if state in MAY_LINGER:
                    await self._kill_leftovers(name, f"{name} is {state.value}")
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
            done = asyncio.get_running_loop().create_future()
            if not force:
                self._graceful[name] = done
            self._stopping.add(name)
            try:
                info = await self._end_process(name, handle, force)
                self.handles.pop(name, None)
                self.tracker(name).machine_down()
                if fail_reason is not None:
                    await self.engine.transition(name, Verb.FAILED, reason=fail_reason,
                                                 update=clear_process,
                                                 message=f"stopped: {info.detail}")
                else:
                    await self.engine.transition(name, Verb.STOPPED, update=clear_process,
                                                 message=f"stopped: {info.detail}")
            finally:
                self._stopping.discard(name)
                self._overtaken.discard(name)
                if self._graceful.get(name) is done:
                    del self._graceful[name]
                done.set_result(None)

    async def _end_process(self, name: str, handle: VmHandle, force: bool) -> ExitInfo:
        if force:
            await self.driver.kill(handle)
            return ExitInfo("host-stop", "killed (SIGKILL, stop --force)")
        info = await self.driver.stop(handle, await self.stop_timeouts(name))
        if name in self._overtaken:
            return ExitInfo("host-stop", "killed (SIGKILL): stop --force overtook the "
                            "graceful stop")
        return info

    async def _overtake(self, name: str) -> None:
        """`stop --force` during a graceful stop: kill now, and return once that stop has
        recorded the machine stopped (one `stopped` event, saying it was killed)."""
        done = self._graceful[name]
        self._overtaken.add(name)
        handle = self.handles.get(name)
        if handle is not None:
            await self.driver.kill(handle)
        await asyncio.shield(done)

    async def stop_timeouts(self, name: str) -> StopTimeouts:
        """The machine's `[stop]` deadlines (the defaults if its spec cannot be read: a
        stop must never fail for that)."""
        try:
            stop = (await asyncio.to_thread(self.engine.store.load_spec, name)).stop
        except BoxuiError:
            return StopTimeouts()
        return StopTimeouts(acpi=stop.acpi_timeout, quit=stop.quit_timeout,
                            term=stop.sigterm_timeout, kill=stop.sigkill_timeout)

    async def _kill_leftovers(self, name: str, why: str) -> None:
        """Kill (proven identity only) every hypervisor of `name` still alive although
        boxui holds none: one whose QMP hung so it was not re-adopted, say."""
        for process in await asyncio.to_thread(scan, self.engine.dirs, name):
            orphan = Orphan(process, why)
            what = await kill_process(self.engine.dirs, process)
            await self.engine.record_event(orphan_event(
                ORPHAN_KILLED_TYPE, orphan, f"leftover QEMU pid {process.pid} ({why}): {what}"))

    async def leftovers(self, name: str) -> list[int]:
        """Pids of live hypervisors of `name` that boxui does not hold."""
        held = self.handles.get(name)
        return [p.pid for p in await asyncio.to_thread(scan, self.engine.dirs, name)
                if held is None or p.pid != held.pid]

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
            left = await self.leftovers(name) if state in MAY_LINGER else []
            if left and not force:
                pids = ", ".join(str(pid) for pid in left)
                raise MachineBusyError(f"a QEMU of {name} still runs (pid {pids}); "
                                       f"`boxui rm --force {name}` kills it first")
            if left:
                await self._kill_leftovers(name, "deleted with --force")
                if await self.leftovers(name):
                    raise MachineBusyError(f"a QEMU of {name} outlived SIGKILL; not deleted")
            await self.engine.delete_machine(name)
            self._trackers.pop(name, None)
            run_dir = self.engine.dirs.machine_run_dir(name)
            await asyncio.to_thread(_remove_tree, run_dir)

    def _ports_in_use(self) -> set[int]:
        return {h.ssh_port for h in self.handles.values()}

    def _forwards(self, spec: MachineSpec, taken: set[int]) -> Forwards:
        """(host, guest, protocol) triples for the spec's published ports; a port without a fixed
        host port gets a free one at each boot."""
        pairs = []
        avoid = self._ports_in_use() | taken
        for mapping in spec.ports:
            host = mapping.host or pick_free_port(avoid, mapping.protocol)
            avoid.add(host)
            pairs.append((host, mapping.guest, mapping.protocol))
        return tuple(pairs)


def _detect_accel(requested: AccelRequest) -> AccelChoice:
    return resolve_accel(requested)


def _remove_tree(path: object) -> None:
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
