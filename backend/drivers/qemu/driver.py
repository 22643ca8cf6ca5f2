"""The QEMU microVM driver.

QEMU runs daemonized in its own session with a pidfile, so it is not boxui's child and
survives boxui's death. boxui holds it through a pidfd (exit notification, safe signals)
and a QMP connection (power button, memory stats, the reason of a shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable
from pathlib import Path

from qemu.qmp import EventListener, QMPClient, QMPError

from backend.drivers.base import (
    AdoptRefusal,
    AdoptRequest,
    DriverCapabilities,
    ExitInfo,
    GuestMemory,
    HypervisorDriver,
    LaunchSpec,
    PendingRestore,
    ProbeResult,
    SnapshotSaved,
    StopTimeouts,
    VmHandle,
)
from backend.drivers.console_watch import ConsoleTail, wait_for_line
from backend.drivers.errors import DriverError, PortInUseError
from backend.drivers.process_identity import PidWatch, start_time_of, watch_proven
from backend.drivers.qemu.cmdline import QemuConfig, build_argv, find_qemu, kernel_append
from backend.drivers.qemu.host_memory import preexec_for
from backend.drivers.qemu.qmp_ops import (
    ForwardRefused,
    enable_balloon_stats,
    hostfwd_add,
    hostfwd_remove,
    load_snapshot_and_resume,
    read_balloon_stats,
    request_powerdown,
    request_quit,
    save_snapshot_to,
)
from backend.drivers.qemu.readiness import scan_console
from backend.drivers.ssh_probe import wait_for_banner
from backend.drivers.stop_escalation import Ending, Step, escalate, kill_now
from backend.guest.errors import GuestImageError
from backend.state.port_mapping import Protocol

QMP_SOCKET = "qmp.sock"
PIDFILE = "qemu.pid"
#: how long a process SIGKILLed outside a stop's escalation may take to be gone
KILL_TIMEOUT = 5.0
#: a memory snapshot of the largest guest to a slow disk finishes well within this
SNAPSHOT_TIMEOUT = 600.0
#: how long dropping a QMP connection may take (a hung QEMU never reads its socket)
DISCONNECT_TIMEOUT = 2.0
#: how long a SHUTDOWN event may trail the exit it announced (both arrive on the loop)
SHUTDOWN_EVENT_GRACE = 0.5
#: the SHUTDOWN reason each step of a stop leaves (SIGKILL leaves none: QEMU is gone)
_STEP_REASON: dict[Step, str] = {"acpi": "guest-shutdown", "quit": "host-qmp-quit",
                                 "term": "host-signal"}
#: QMP run states of a VM whose guest has not run since QEMU started: a restore that
#: was never loaded ("inmigrate") or never resumed ("paused", "postmigrate")
_NEVER_RAN = ("inmigrate", "paused", "postmigrate", "prelaunch")


def qmp_socket_path(run_dir: Path) -> Path:
    return run_dir / QMP_SOCKET


def identity_args(name: str, run_dir: Path) -> list[str]:
    """Arguments that only this machine's QEMU, from this state dir, has on its cmdline."""
    label = f"boxui-{name}"
    qmp = str(qmp_socket_path(run_dir)).replace(",", ",,")
    return [f"{label},process={label}", f"unix:{qmp},server=on,wait=off"]


class _Live:
    """Per-VM connections the driver keeps while it holds a VM."""

    def __init__(self, watch: PidWatch, qmp: QMPClient | None,
                 shutdown: EventListener | None) -> None:
        self.watch = watch
        self.qmp = qmp
        self.shutdown = shutdown
        self.stopping = False


class QemuDriver(HypervisorDriver):
    def __init__(self, qemu_binary: str | None = None) -> None:
        self._binary = qemu_binary
        self._live: dict[int, _Live] = {}
        #: how each released VM ended, for whichever of stop() or the watcher asks last
        self._ended: dict[int, ExitInfo] = {}

    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities(name="qemu", snapshots=True, graceful_stop=True,
                                  accels=("kvm", "tcg"))

    @property
    def binary(self) -> str:
        if self._binary is None:
            try:
                self._binary = find_qemu()
            except GuestImageError as exc:
                raise DriverError(str(exc)) from None
        return self._binary

    # --- start -----------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> VmHandle:
        qmp_path, pidfile = await _prepare_run_dir(spec)
        snapshot_fd = _open_snapshot(spec.restore_from)
        config = _qemu_config(spec, qmp_path, pidfile, incoming=snapshot_fd is not None)
        try:
            await self._daemonize(spec, config, snapshot_fd)
        finally:
            if snapshot_fd is not None:
                os.close(snapshot_fd)  # QEMU keeps its own copy, under the same number
        pid, started = _launched_process(spec, pidfile)
        watch = watch_proven(pid, started, identity_args(spec.name, spec.run_dir))
        if isinstance(watch, str):
            raise DriverError(f"qemu for {spec.name} is not the process it started: {watch}")
        restore = None
        if spec.restore_from is not None and snapshot_fd is not None:
            restore = PendingRestore(spec.restore_from, snapshot_fd)
        handle = VmHandle(name=spec.name, pid=pid, start_time=started,
                          ssh_port=spec.ssh_port, boot_id=spec.boot_id, accel=spec.accel,
                          console_log=spec.console_log, qmp_socket=qmp_path,
                          kernel_cmdline=kernel_append(config), ram_file=spec.ram_file,
                          restore=restore)
        await self._hold(handle, watch)
        return handle

    async def _daemonize(self, spec: LaunchSpec, config: QemuConfig,
                         snapshot_fd: int | None) -> None:
        """Run QEMU until it has daemonized: its exit status says whether the VM came
        up, and its stderr why not."""
        try:
            argv = build_argv(config, self.binary)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
                pass_fds=() if snapshot_fd is None else (snapshot_fd,),
                preexec_fn=preexec_for(config.accel),  # no THP under TCG (host_memory)
            )
            _, err = await proc.communicate()
        except GuestImageError as exc:
            raise DriverError(str(exc)) from None
        if proc.returncode == 0:
            return
        message = _last_line(err.decode(errors="replace")) or f"exit {proc.returncode}"
        if "hostfwd" in message or "host forwarding" in message:
            ports = ", ".join(str(p) for p in (spec.ssh_port,
                                              *(h for h, _ in spec.port_forwards),
                                              *(h for h, _ in spec.udp_forwards)))
            raise PortInUseError(f"a port of 127.0.0.1:{ports} is in use: {message}")
        raise DriverError(f"qemu failed to start {spec.name}: {message}")

    async def _hold(self, handle: VmHandle, watch: PidWatch) -> None:
        shutdown = EventListener(("SHUTDOWN",))
        self._live[handle.pid] = _Live(watch, await _connect_qmp(handle, shutdown), shutdown)

    # --- readiness -------------------------------------------------------------------

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        live = self._live.get(handle.pid)
        if live is None:  # already released: its exit was seen first
            raise DriverError(f"{handle.name}: QEMU exited before the guest was ready; "
                              f"see {handle.console_log}")
        gone = asyncio.Event()
        died = asyncio.ensure_future(_set_when(live.watch.wait(), gone))
        tail = ConsoleTail(handle.console_log)
        try:
            async with asyncio.timeout(timeout):
                if handle.restore is not None:
                    # a restored guest printed its ready marker before it was saved
                    await self._load_unless_gone(handle, live, handle.restore, died)
                else:
                    await self._refuse_unfinished_restore(handle)
                    verdict = await wait_for_line(
                        tail, lambda line: scan_console(line, handle.boot_id), gone)
                    if verdict is None:
                        raise DriverError(f"{handle.name}: QEMU exited before the guest was "
                                          f"ready; see {handle.console_log}")
                    if verdict is False:
                        raise DriverError(f"{handle.name}: guest failed to boot; "
                                          f"see {handle.console_log}")
                if not await wait_for_banner(handle.ssh_port, lambda: live.watch.exited):
                    raise DriverError(f"{handle.name}: QEMU exited before SSH answered")
        except TimeoutError:
            raise DriverError(f"{handle.name}: not ready after {timeout:.0f} s; "
                              f"see {handle.console_log}") from None
        finally:
            died.cancel()
            died.add_done_callback(_outcome_seen)

    async def _load_unless_gone(self, handle: VmHandle, live: _Live, restore: PendingRestore,
                                died: asyncio.Future[None]) -> None:
        """The load, ended with this wait however it ends (QEMU gone, the deadline, the
        caller cancelled, as a pool's member is when its daemon stops): a load left
        running would fail once its QEMU is killed, with nobody to hear it."""
        loading = asyncio.ensure_future(self._restore(handle, live, restore))
        try:
            await asyncio.wait({loading, died}, return_when=asyncio.FIRST_COMPLETED)
            if not loading.done():
                raise DriverError(f"{handle.name}: QEMU exited while loading the "
                                  f"snapshot; see {handle.console_log}")
            loading.result()
        finally:
            loading.cancel()
            loading.add_done_callback(_outcome_seen)

    async def _refuse_unfinished_restore(self, handle: VmHandle) -> None:
        """A VM boxui left mid-restore (it died between starting QEMU and `cont`) waits
        for a load nobody will start, or sits paused: no console line will ever come,
        so say so now rather than after the boot timeout."""
        probe = await self.probe(handle)
        if probe.status in _NEVER_RAN:
            raise DriverError(f"{handle.name}: boxui stopped while restoring its snapshot "
                              f"(QEMU is {probe.status}); start it again")

    async def _restore(self, handle: VmHandle, live: _Live, restore: PendingRestore) -> None:
        source = restore.source
        if live.qmp is None:
            raise DriverError(f"{handle.name}: no QMP connection to load the snapshot through")
        try:
            await load_snapshot_and_resume(live.qmp, restore.fd,
                                           ram_in_file=handle.ram_file is not None)
        except Exception as exc:
            if live.watch.exited:
                raise DriverError(f"{handle.name}: QEMU exited while loading the snapshot "
                                  f"{source}") from None
            raise DriverError(f"{handle.name}: loading snapshot {source} failed: {exc}") from None

    async def save_snapshot(self, handle: VmHandle, target: Path) -> SnapshotSaved:
        live = self._live.get(handle.pid)
        if live is None or live.qmp is None:
            raise DriverError(f"{handle.name}: no QMP connection to save a snapshot through")
        ram = handle.ram_file
        ram_file = ram.path if ram is not None and ram.shared else None
        started = time.monotonic()
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                memory = await save_snapshot_to(live.qmp, target,
                                                ram_in_file=ram_file is not None)
        except TimeoutError:
            await asyncio.to_thread(target.unlink, missing_ok=True)
            raise DriverError(f"{handle.name}: saving a snapshot took over "
                              f"{SNAPSHOT_TIMEOUT:.0f} s; QEMU is not answering") from None
        except Exception as exc:
            await asyncio.to_thread(target.unlink, missing_ok=True)
            raise DriverError(f"{handle.name}: saving a snapshot failed: {exc}") from None
        seconds = time.monotonic() - started
        size = (await asyncio.to_thread(os.stat, target)).st_size
        ram_bytes = 0
        if ram_file is not None:
            ram_stat = await asyncio.to_thread(os.stat, ram_file)
            memory, ram_bytes = ram_stat.st_size, ram_stat.st_blocks * 512
        return SnapshotSaved(path=target, state_bytes=size, memory_bytes=memory,
                             kernel_cmdline=handle.kernel_cmdline,
                             seconds=seconds, ram_file=ram_file, ram_file_bytes=ram_bytes)

    # --- exit and stop ---------------------------------------------------------------

    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        live = self._live.get(handle.pid)
        if live is None:
            return self._ended.get(handle.pid, ExitInfo("vanished", "qemu process exited"))
        await live.watch.wait()
        info = self._exit_info(live)
        self._ended[handle.pid] = info
        await self._release(handle)
        return info

    def _exit_info(self, live: _Live) -> ExitInfo:
        reason = None
        if live.shutdown is not None and live.shutdown.history:
            data = live.shutdown.history[-1].get("data", {})
            reason = data.get("reason") if isinstance(data, dict) else None
        if live.stopping:
            return ExitInfo("host-stop", "stopped by boxui")
        if reason == "guest-shutdown":
            return ExitInfo("guest-shutdown", "the guest powered off")
        if reason == "guest-reset":
            return ExitInfo("guest-reset", "the guest rebooted (kernel panic or reboot)")
        if reason == "guest-panic":
            return ExitInfo("guest-panic", "the guest kernel panicked")
        if reason:
            return ExitInfo("vanished", f"qemu exited ({reason})")
        return ExitInfo("vanished", "qemu process exited unexpectedly")

    async def stop(self, handle: VmHandle, timeouts: StopTimeouts) -> ExitInfo:
        live = self._live.get(handle.pid)
        if live is None:
            raise DriverError(f"{handle.name}: not held by this driver")
        live.stopping = True
        qmp = live.qmp
        ending = await escalate(
            live.watch, timeouts,
            powerdown=None if qmp is None else (lambda: request_powerdown(qmp)),
            quit=None if qmp is None else (lambda: request_quit(qmp)))
        confirmed = await self._confirm(live, ending)
        await self.wait_exit(handle)
        return ExitInfo("host-stop", ending.describe(confirmed))

    async def _confirm(self, live: _Live, ending: Ending) -> bool:
        """Whether QEMU's own SHUTDOWN reason agrees that `ending.step` ended it: a guest
        killed by hand while its power-off hung must not read as powered off."""
        if ending.step is None or ending.step == "kill":
            return ending.step == "kill"
        if live.shutdown is None or live.qmp is None:
            return False
        if not live.shutdown.history:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(live.shutdown.get(), SHUTDOWN_EVENT_GRACE)
        if not live.shutdown.history:
            return False
        data = live.shutdown.history[-1].get("data", {})
        reason = data.get("reason") if isinstance(data, dict) else None
        return bool(reason == _STEP_REASON[ending.step])

    async def kill(self, handle: VmHandle) -> None:
        live = self._live.get(handle.pid)
        if live is None:
            return
        live.stopping = True
        await kill_now(live.watch, KILL_TIMEOUT)
        # nothing more to say to it; and a kill may have no watcher to release it (a
        # pool's discarded member), which would leave the client's EOFError unretrieved
        await _drop_qmp(live)

    async def _release(self, handle: VmHandle) -> None:
        """Let go of a VM that has exited, and of its QMP socket unless a QEMU (a later
        one, reusing the path) still answers on it."""
        if not await self._let_go(handle):
            return
        with contextlib.suppress(FileNotFoundError):
            if not _socket_answers(handle.qmp_socket):
                handle.qmp_socket.unlink()

    async def close(self, handle: VmHandle) -> None:
        """Let go of a VM without touching it (boxui is shutting down; the VM runs on)."""
        await self._let_go(handle)

    async def _let_go(self, handle: VmHandle) -> bool:
        """Stop watching `handle` and drop its QMP connection; False if it was not held."""
        live = self._live.pop(handle.pid, None)
        if live is None:
            return False
        live.watch.close()
        await _drop_qmp(live)
        return True

    # --- port forwards ---------------------------------------------------------------

    def _qmp_of(self, handle: VmHandle) -> QMPClient:
        live = self._live.get(handle.pid)
        if live is None or live.watch.exited:
            raise DriverError(f"{handle.name}: its QEMU is not running")
        if live.qmp is None:
            raise DriverError(f"{handle.name}: its QEMU does not answer on QMP")
        return live.qmp

    async def add_forward(self, handle: VmHandle, protocol: Protocol, host: int,
                          guest: int) -> None:
        try:
            await hostfwd_add(self._qmp_of(handle), protocol, host, guest)
        except ForwardRefused as exc:
            raise PortInUseError(f"QEMU refused to forward 127.0.0.1:{host}/{protocol} to "
                                 f"guest port {guest}: {exc}") from None
        except (TimeoutError, QMPError, OSError) as exc:
            raise DriverError(f"{handle.name}: QMP: {exc or type(exc).__name__}") from None

    async def remove_forward(self, handle: VmHandle, protocol: Protocol, host: int) -> None:
        try:
            await hostfwd_remove(self._qmp_of(handle), protocol, host)
        except ForwardRefused as exc:
            raise DriverError(f"QEMU did not remove the forward of 127.0.0.1:{host}/"
                              f"{protocol}: {exc}") from None
        except (TimeoutError, QMPError, OSError) as exc:
            raise DriverError(f"{handle.name}: QMP: {exc or type(exc).__name__}") from None

    # --- probe, adopt, health --------------------------------------------------------

    async def probe(self, handle: VmHandle) -> ProbeResult:
        live = self._live.get(handle.pid)
        if live is None or live.watch.exited:
            return ProbeResult(alive=False, responsive=False, status="exited")
        if live.qmp is None:  # silent when held; it may answer again (SIGCONT)
            live.shutdown = live.shutdown or EventListener(("SHUTDOWN",))
            live.qmp = await _connect_qmp(handle, live.shutdown, timeout=1)
        if live.qmp is None:
            return ProbeResult(alive=True, responsive=False, status="no QMP connection")
        try:
            status = await asyncio.wait_for(live.qmp.execute("query-status"), 2)
        except Exception as exc:
            return ProbeResult(alive=True, responsive=False, status=f"QMP: {exc}")
        state = status.get("status", "?") if isinstance(status, dict) else "?"
        return ProbeResult(alive=True, responsive=True, status=str(state))

    async def adopt(self, request: AdoptRequest) -> VmHandle | AdoptRefusal:
        pid, start_time = request.pid, request.start_time
        wanted = request.identity or identity_args(request.name, request.run_dir)
        watch = watch_proven(pid, start_time, wanted)
        if isinstance(watch, str):
            return AdoptRefusal(watch)
        handle = VmHandle(name=request.name, pid=pid, start_time=start_time,
                          ssh_port=request.ssh_port, boot_id=request.boot_id,
                          accel=request.accel, console_log=request.console_log,
                          qmp_socket=qmp_socket_path(request.run_dir))
        # proven ours even if its QMP is silent (a hung or stopped QEMU): the caller
        # probes it and adopts it as unresponsive, so that stop and rm can still kill it
        await self._hold(handle, watch)
        return handle

    async def guest_memory(self, handle: VmHandle) -> GuestMemory:
        live = self._live.get(handle.pid)
        if live is None or live.qmp is None:
            return GuestMemory(None, None)
        try:
            result = await asyncio.wait_for(read_balloon_stats(live.qmp), 1)
        except Exception:
            return GuestMemory(None, None)
        stats = result.get("stats", {}) if result.get("last-update") else {}
        total = stats.get("stat-total-memory")
        free = stats.get("stat-available-memory", stats.get("stat-free-memory"))
        return GuestMemory(
            int(total) if isinstance(total, int) and total >= 0 else None,
            int(free) if isinstance(free, int) and free >= 0 else None,
        )


async def _drop_qmp(live: _Live) -> None:
    """Disconnect `live`'s QMP client. Its reader's error (EOFError: QEMU is gone) is
    re-raised by `disconnect` and dropped here; the disconnect runs to its end even when
    this stops waiting for it, since one cut short leaves that error unretrieved (asyncio
    then prints "_GatheringFuture exception was never retrieved")."""
    qmp, live.qmp = live.qmp, None
    if qmp is None:
        return
    ending = asyncio.ensure_future(qmp.disconnect())
    ending.add_done_callback(lambda done: done.cancelled() or done.exception())
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(ending), DISCONNECT_TIMEOUT)


async def _connect_qmp(handle: VmHandle, shutdown: EventListener,
                       timeout: float = 5) -> QMPClient | None:
    """A QMP connection told of SHUTDOWN events, or None when QMP does not answer (the
    VM is still held: its pidfd alone tells when it exits)."""
    qmp = QMPClient(f"boxui-{handle.name}")
    try:
        await asyncio.wait_for(qmp.connect(str(handle.qmp_socket)), timeout)
        qmp.register_listener(shutdown)
    except Exception:
        return None
    with contextlib.suppress(Exception):
        await enable_balloon_stats(qmp, 1)
    return qmp


async def _prepare_run_dir(spec: LaunchSpec) -> tuple[Path, Path]:
    """Clear what an earlier QEMU of this machine left (refusing a live one's socket),
    and ready the RAM file; return the QMP socket and pidfile paths."""
    spec.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spec.run_dir, 0o700)
    qmp_path = qmp_socket_path(spec.run_dir)
    _remove_stale_socket(qmp_path)
    if spec.agent_socket is not None:
        _remove_stale_socket(spec.agent_socket)
    pidfile = spec.run_dir / PIDFILE
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    _rotate(spec.console_log)
    if spec.ram_file is not None:
        await asyncio.to_thread(_prepare_ram_file, spec.ram_file.path,
                                spec.ram_file.shared, spec.memory_mib << 20)
    return qmp_path, pidfile


def _open_snapshot(path: Path | None) -> int | None:
    """The snapshot's descriptor for QEMU to inherit, or None when booting."""
    if path is None:
        return None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DriverError(f"cannot read snapshot {path}: {exc.strerror}") from None


def _qemu_config(spec: LaunchSpec, qmp_path: Path, pidfile: Path, *,
                 incoming: bool) -> QemuConfig:
    return QemuConfig(
        name=spec.name, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
        kernel=spec.kernel, initrd=spec.initrd, accel=spec.accel,
        ssh_port=spec.ssh_port, console_log=spec.console_log, qmp_socket=qmp_path,
        pidfile=pidfile, boot_id=spec.boot_id, append=spec.append, tsc_khz=spec.tsc_khz,
        disk_image=spec.disk_image, port_forwards=spec.port_forwards,
        udp_forwards=spec.udp_forwards,
        kernel_cmdline=spec.kernel_cmdline, incoming=incoming,
        agent_socket=spec.agent_socket,
        ram_file=spec.ram_file.path if spec.ram_file else None,
        ram_file_shared=spec.ram_file.shared if spec.ram_file else False,
        mounts=spec.mounts,
    )


def _launched_process(spec: LaunchSpec, pidfile: Path) -> tuple[int, float]:
    """The daemonized QEMU's pid (from its pidfile) and start time, its identity."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise DriverError(f"qemu started but wrote no pidfile at {pidfile}") from exc
    started = start_time_of(pid)
    if started is None:
        raise DriverError(f"qemu for {spec.name} exited right after starting; "
                          f"see {spec.console_log}")
    return pid, started


def _outcome_seen(task: asyncio.Future[None]) -> None:
    """Retrieve an abandoned task's exception: the error that ended its wait says it."""
    if not task.cancelled():
        task.exception()


async def _set_when(awaitable: Awaitable[None], event: asyncio.Event) -> None:
    await awaitable
    event.set()


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _prepare_ram_file(path: Path, shared: bool, size: int) -> None:
    """A shared RAM file (a snapshot build's) starts empty and 0600: it will hold the
    guest's memory, and QEMU would create it 0644. A private one (a restore's) must be
    whole: QEMU would silently size an empty file, writing into the template, and
    refuses a short one less clearly."""
    if shared:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return
    try:
        found = os.stat(path).st_size
    except OSError as exc:
        raise DriverError(f"cannot read snapshot memory {path}: {exc.strerror}") from None
    if found != size:
        raise DriverError(f"snapshot memory {path} is {found} bytes, not the {size} the "
                          "machine's memory needs; rebuild the template")


def _remove_stale_socket(path: Path) -> None:
    """Remove a leftover socket only when no live process is listening on it."""
    if not path.exists():
        return
    if _socket_answers(path):
        raise DriverError(f"a live QEMU still holds {path}; refusing to start a second one")
    path.unlink()


def _rotate(console_log: Path) -> None:
    if console_log.exists():
        os.replace(console_log, console_log.with_name(console_log.name + ".1"))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
