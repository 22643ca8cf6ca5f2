"""The stand-in driver: plain processes instead of VMs, for tests and `boxui demo` only.

Nothing on the product path chooses it: a test, or the demo, hands it to the supervisor
in place of `QemuDriver`, the way httpx's `MockTransport` stands in for a real transport.

Each machine gets a real, tiny stand-in process whose command line carries the identity
arguments QEMU's would, so pids, start times, pidfds, adoption checks, CPU and RSS
health, signals and "the process died" are all real; only the guest is pretend. So is a
hang: a stand-in SIGSTOPped by a test answers neither its pretend power button nor its
pretend QMP, never gets ready, and only SIGKILL ends it, as a hung QEMU. Per
machine, a `GuestPlan` scripts that guest: how long it boots, whether the boot fails,
whether its process dies by itself, how such an exit is told, whether its memory
statistics answer.

Two kinds of stand-in process:

- quiet (tests): it sleeps, and outlives the process that started it, as QEMU outlives
  boxui, so crash recovery can adopt it after a daemon is killed;
- lively (the demo): it burns a drifting share of a CPU so the health columns move, works
  harder while its machine is busy (`set_load`), and exits as soon as the app that
  started it is gone, so a killed demo leaves no CPU burners behind; the driver also
  writes a pretend boot and power-off to each machine's console log.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import psutil

from backend.drivers.base import (
    AdoptRefusal,
    AdoptRequest,
    DriverCapabilities,
    ExitInfo,
    ExitKind,
    GuestMemory,
    HypervisorDriver,
    LaunchSpec,
    ProbeResult,
    StopTimeouts,
    VmHandle,
)
from backend.drivers.errors import DriverError, PortInUseError
from backend.drivers.process_identity import (
    PidWatch,
    same_process,
    start_time_of,
    watch_proven,
)
from backend.drivers.qemu.driver import KILL_TIMEOUT, identity_args, qmp_socket_path
from backend.drivers.stop_escalation import Ending, escalate, kill_now
from backend.state.accelerator import Accel
from backend.state.port_mapping import Protocol

#: memory of a guest the driver did not start (adopted): its spec is not at hand
ADOPTED_MEMORY_MIB = 256

#: The quiet stand-in: sleeps until it is signalled. argv: QEMU's identity arguments
#: only (unused here, but on the cmdline so adoption checks and `pgrep -f boxui-<name>`
#: work as they do for QEMU).
QUIET = "import time, sys; sys.stdout.close(); time.sleep(10**6)"

#: The lively stand-in: burns a drifting 5-30 % of each 200 ms (40-60 % while its
#: machine is busy; SIGUSR1/SIGUSR2 switch) and exits once its parent is gone.
#: argv: the parent's pid, then QEMU's identity arguments.
LIVELY = """\
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


@dataclass
class GuestPlan:
    """How one pretend guest behaves. Mutable, so a test can change a machine's plan
    between two boots of it."""

    #: seconds from start to ready (divided by the driver's `speed`)
    boot_delay: float = 0.0
    #: the boot fails with this message (after the delay)
    fail_boot: str | None = None
    #: the process is killed this long after it starts, as a crashing VM would end
    die_after: float | None = None
    #: how an exit boxui did not ask for is reported
    exit_kind: ExitKind = "vanished"
    #: whether reading the guest's memory statistics answers, never returns, or fails
    memory: Literal["answers", "hangs", "fails"] = "answers"
    #: whether the guest powers off when its (pretend) ACPI power button is pressed
    acpi: Literal["answers", "ignored"] = "answers"


@dataclass
class _Guest:
    name: str
    watch: PidWatch
    #: the child to reap; None for a guest adopted from another process
    proc: asyncio.subprocess.Process | None
    memory_mib: int
    console_log: Path
    ready: bool = False
    stopping: bool = False
    #: the gentle stop step that ended the process ("acpi" or "quit"), if one did
    ended_by: str | None = None
    #: (protocol, host port) -> guest port, as QEMU's user network would hold them
    forwards: dict[tuple[str, int], int] = field(default_factory=dict)


class StandInDriver(HypervisorDriver):
    """A hypervisor driver whose guests are stand-in processes (see the module).

    A machine without a plan boots in a delay drawn from `boot_range`. Delays are
    divided by `speed`, so a test can run the demo's story fast. `stop_seconds` is how
    long a graceful stop pretends the guest takes to power off. `guest_memory_reply`
    fixes what every guest reports; None reports a slowly breathing use of the machine's
    memory, different per machine.
    """

    def __init__(
        self,
        plans: Mapping[str, GuestPlan] | None = None,
        *,
        lively: bool = False,
        speed: float = 1.0,
        stop_seconds: float = 0.0,
        boot_range: tuple[float, float] = (0.0, 0.0),
        guest_memory_reply: GuestMemory | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.plans = dict(plans or {})
        self.lively = lively
        self.speed = speed
        self.stop_seconds = stop_seconds
        self.boot_range = boot_range
        self.guest_memory_reply = guest_memory_reply
        self._rng = rng or random.Random()
        self._guests: dict[int, _Guest] = {}
        #: pids of the stand-ins whose QMP never answers (see `hang_qmp`)
        self.qmp_hung: set[int] = set()
        #: every stand-in started or adopted and not yet reaped, pid -> start time, for
        #: the final sweep
        self.spawned: dict[int, float] = {}

    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities(name="stand-in", snapshots=False, graceful_stop=True,
                                  accels=get_args(Accel))

    def plan(self, name: str) -> GuestPlan:
        if name not in self.plans:
            self.plans[name] = GuestPlan(self._rng.uniform(*self.boot_range))
        return self.plans[name]

    # --- start and boot --------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> VmHandle:
        self._forget_exited()
        proc = await self._spawn(spec)
        started = start_time_of(proc.pid)
        if started is None:
            await proc.wait()
            raise DriverError(f"{spec.name}: the stand-in process exited at once")
        self.spawned[proc.pid] = started
        guest = _Guest(spec.name, PidWatch(proc.pid), proc, spec.memory_mib,
                       spec.console_log)
        self._guests[proc.pid] = guest
        die_after = self.plan(spec.name).die_after
        if die_after is not None:
            asyncio.get_running_loop().call_later(die_after / self.speed, self._die, guest)
        await self._console(guest, _boot_lines(spec.name)[:1], fresh=True)
        guest.forwards = {("tcp", h): g for h, g in spec.port_forwards}
        guest.forwards.update({("udp", h): g for h, g in spec.udp_forwards})
        return VmHandle(name=spec.name, pid=proc.pid, start_time=started,
                        ssh_port=spec.ssh_port, boot_id=spec.boot_id, accel=spec.accel,
                        console_log=spec.console_log, qmp_socket=qmp_socket_path(spec.run_dir))

    async def _spawn(self, spec: LaunchSpec) -> asyncio.subprocess.Process:
        identity = identity_args(spec.name, spec.run_dir)
        argv = ([LIVELY, str(os.getpid()), *identity] if self.lively
                else [QUIET, *identity])
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", *argv,
            start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )

    def _die(self, guest: _Guest) -> None:
        """A scripted crash, unless the guest has already ended or been let go."""
        if self._guests.get(guest.watch.pid) is guest and not guest.watch.exited:
            guest.watch.send(signal.SIGKILL)

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        guest = self._guests.get(handle.pid)
        if guest is None:
            raise DriverError(f"{handle.name}: not a stand-in this driver started")
        plan = self.plan(handle.name)
        boot = plan.boot_delay / self.speed
        lines = _boot_lines(handle.name)[1:]
        for line in lines:  # the console fills in while the "kernel" boots
            if await _exits_within(guest.watch, min(boot, timeout) / len(lines)):
                raise DriverError(f"{handle.name}: the stand-in process exited before the "
                                  "guest was ready")
            await self._console(guest, [line])
        if plan.fail_boot:
            await self._console(guest, ["[    2.718281] Kernel panic - not syncing: "
                                        f"{plan.fail_boot}"])
            raise DriverError(plan.fail_boot)
        if boot > timeout or is_stopped(guest.watch.pid):
            # a SIGSTOPped guest never answers: out of time, like a hung QEMU's boot
            await _exits_within(guest.watch, max(0.0, timeout - boot))
            raise DriverError(f"{handle.name}: not ready after {timeout:.0f} s")
        guest.ready = True
        await self._console(guest, [f"{handle.name} login: (demo guest ready)"])

    # --- exit and stop ---------------------------------------------------------------

    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        guest = self._guests.get(handle.pid)
        if guest is None:
            return ExitInfo("vanished", "not a stand-in this driver knows")
        await guest.watch.wait()
        if guest.proc is not None:
            await guest.proc.wait()
        if guest.stopping:
            return ExitInfo("host-stop", "stopped by boxui")
        return ExitInfo(self.plan(handle.name).exit_kind, "the stand-in process exited")

    async def stop(self, handle: VmHandle, timeouts: StopTimeouts) -> ExitInfo:
        """The same escalation as QEMU's: a pretend ACPI power-off that takes
        `stop_seconds` (so `stopping` is seen), a pretend QMP `quit`, then signals."""
        guest = self._guests.get(handle.pid)
        if guest is None:
            return ExitInfo("vanished", "not a stand-in this driver knows")
        guest.stopping = True
        ending = await escalate(guest.watch, timeouts,
                                powerdown=lambda: self._powerdown(guest),
                                quit=lambda: self._quit(guest))
        if guest.proc is not None:
            await guest.proc.wait()
        return ExitInfo("host-stop", ending.describe(_confirmed(guest, ending)))

    async def _powerdown(self, guest: _Guest) -> None:
        await _answer_unless_hung(guest)
        if self.plan(guest.name).acpi == "ignored":
            return
        await self._console(guest, ["[  OK  ] Reached target Power-Off (demo)."])

        def power_off() -> None:
            if not guest.watch.exited and not is_stopped(guest.watch.pid):
                guest.ended_by = "acpi"
                guest.watch.send(signal.SIGTERM)

        asyncio.get_running_loop().call_later(self.stop_seconds / self.speed, power_off)

    async def _quit(self, guest: _Guest) -> None:
        await _answer_unless_hung(guest)
        guest.ended_by = "quit"
        guest.watch.send(signal.SIGTERM)

    async def kill(self, handle: VmHandle) -> None:
        guest = self._guests.get(handle.pid)
        if guest is None:
            return
        guest.stopping = True
        await kill_now(guest.watch, KILL_TIMEOUT)

    def renamed(self, handle: VmHandle, name: str, console_log: Path,
                qmp_socket: Path) -> VmHandle:
        guest = self._guests.get(handle.pid)
        if guest is not None:
            guest.name, guest.console_log = name, console_log
        return super().renamed(handle, name, console_log, qmp_socket)

    async def close(self, handle: VmHandle) -> None:
        """Keep the pidfd: `shutdown` and `kill_all`, which run once the supervisor has
        let go (so the kills are not recorded as crashes), still end the stand-in."""

    # --- port forwards ---------------------------------------------------------------

    def forwards(self, name: str) -> dict[tuple[str, int], int]:
        """The forwards machine `name`'s running stand-in holds (empty if none runs)."""
        for guest in self._guests.values():
            if guest.name == name and not guest.watch.exited:
                return dict(guest.forwards)
        return {}

    def _running(self, handle: VmHandle) -> _Guest:
        guest = self._guests.get(handle.pid)
        if guest is None or guest.watch.exited:
            raise DriverError(f"{handle.name}: its stand-in is not running")
        if guest.watch.pid in self.qmp_hung:
            raise DriverError(f"{handle.name}: QMP: timed out")
        return guest

    async def add_forward(self, handle: VmHandle, protocol: Protocol, host: int,
                          guest: int) -> None:
        """Refused, as QEMU refuses it, when any running stand-in holds the host port."""
        running = self._running(handle)
        if any((protocol, host) in g.forwards for g in self._guests.values()
               if not g.watch.exited):
            raise PortInUseError(f"QEMU refused to forward 127.0.0.1:{host}/{protocol} to "
                                 f"guest port {guest}: Could not set up host forwarding rule")
        running.forwards[(protocol, host)] = guest

    async def remove_forward(self, handle: VmHandle, protocol: Protocol, host: int) -> None:
        self._running(handle).forwards.pop((protocol, host), None)

    # --- probe, adopt, health --------------------------------------------------------

    def hang_qmp(self, name: str, hung: bool = True) -> None:
        """Make the QMP of machine `name`'s running stand-in stop answering, as a hung or
        SIGSTOPped QEMU's does (probes and memory statistics never return), or
        (`hung=False`) answer again. Its process, like a SIGSTOP, only: a restart runs a
        fresh one that answers."""
        pids = {pid for pid, g in self._guests.items() if g.name == name and not g.watch.exited}
        if hung:
            self.qmp_hung |= pids
        else:
            self.qmp_hung -= pids

    async def probe(self, handle: VmHandle) -> ProbeResult:
        if handle.pid in self.qmp_hung:
            await asyncio.Event().wait()  # a QMP that never answers
        guest = self._guests.get(handle.pid)
        alive = guest is not None and not guest.watch.exited
        if alive and is_stopped(handle.pid):
            return ProbeResult(True, False, "QMP: not answering (process stopped)")
        return ProbeResult(alive, alive, "running" if alive else "exited")

    async def adopt(self, request: AdoptRequest) -> VmHandle | AdoptRefusal:
        pid = request.pid
        wanted = request.identity or identity_args(request.name, request.run_dir)
        watch = watch_proven(pid, request.start_time, wanted)
        if isinstance(watch, str):
            return AdoptRefusal(watch)
        earlier = self._guests.pop(pid, None)
        if earlier is not None:
            earlier.watch.close()
        self.spawned[pid] = request.start_time
        self._guests[pid] = _Guest(request.name, watch, None, ADOPTED_MEMORY_MIB,
                                   request.console_log, ready=True)
        return VmHandle(name=request.name, pid=pid, start_time=request.start_time,
                        ssh_port=request.ssh_port, boot_id=request.boot_id,
                        accel=request.accel, console_log=request.console_log,
                        qmp_socket=qmp_socket_path(request.run_dir))

    async def guest_memory(self, handle: VmHandle) -> GuestMemory:
        plan = self.plans.get(handle.name)
        if (handle.pid in self.qmp_hung or (plan is not None and plan.memory == "hangs")
                or is_stopped(handle.pid)):
            await asyncio.Event().wait()  # a QMP that never answers
        if plan is not None and plan.memory == "fails":
            raise ConnectionResetError("the stand-in's memory statistics went away")
        if self.guest_memory_reply is not None:
            return self.guest_memory_reply
        guest = self._guests.get(handle.pid)
        return _breathing_memory(handle.name,
                                 (guest.memory_mib if guest else ADOPTED_MEMORY_MIB) << 20)

    # --- the demo's controls, and clean-up -------------------------------------------

    def set_load(self, name: str, busy: bool) -> None:
        """Make a ready lively stand-in work harder (busy) or go back to idling (a quiet
        one has nothing to change, and would die of the signal)."""
        if not self.lively:
            return
        for guest in self._guests.values():
            if guest.name == name and guest.ready and not guest.watch.exited:
                guest.watch.send(signal.SIGUSR1 if busy else signal.SIGUSR2)

    async def shutdown(self, timeout: float = 3.0) -> None:
        """Kill every stand-in still running and reap it: stand-in guests end with the
        program that started them."""
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
        """Drop guests whose process has ended and been reaped (the demo's story loops
        for as long as the app is open; their pidfds must not pile up)."""
        for pid, guest in list(self._guests.items()):
            if guest.watch.exited and (guest.proc is None or guest.proc.returncode is not None):
                guest.watch.close()
                del self._guests[pid]
                self.spawned.pop(pid, None)

    async def _console(self, guest: _Guest, lines: Sequence[str], *,
                       fresh: bool = False) -> None:
        """Append to the machine's console log (lively only: a quiet guest is silent)."""
        if not self.lively:
            return
        path = guest.console_log

        def write() -> None:
            with contextlib.suppress(OSError), path.open("w" if fresh else "a") as fh:
                fh.writelines(f"{line}\n" for line in lines)

        await asyncio.to_thread(write)


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, a debugger): it runs no code at all."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


async def _answer_unless_hung(guest: _Guest) -> None:
    """What a pretend QMP command does first: never answer while the process is stopped
    (the escalation's deadline ends the wait, as for a hung QEMU)."""
    if is_stopped(guest.watch.pid):
        await asyncio.Event().wait()


def _confirmed(guest: _Guest, ending: Ending) -> bool:
    """A pretend power-off or quit is credited only if it is what ended the process; a
    signal boxui sent is its own proof."""
    if ending.step in ("acpi", "quit"):
        return guest.ended_by == ending.step
    return ending.step is not None


async def _exits_within(watch: PidWatch, seconds: float) -> bool:
    """Wait up to `seconds`; True (early) if the process exits meanwhile."""
    done = asyncio.ensure_future(watch.wait())
    try:
        await asyncio.wait({done}, timeout=max(0.0, seconds))
    finally:
        done.cancel()
    return watch.exited


def _breathing_memory(name: str, total: int) -> GuestMemory:
    """A plausible, slowly breathing memory use, different per machine (by name)."""
    phase = zlib.crc32(name.encode()) % 628 / 100
    now = time.time()
    share = 0.45 + 0.2 * math.sin(now / 17 + phase) + 0.05 * math.sin(now / 3.1 + phase)
    used = int(total * share)
    return GuestMemory(total, total - used)


def _boot_lines(name: str) -> list[str]:
    return [
        f"[    0.000000] boxui demo guest {name}: a stand-in process, not a real VM",
        "[    0.104511] Booting the pretend kernel on a pretend CPU ...",
        "[    0.731906] Run /init as init process",
        "[    1.208337] dropbear: listening on port 22 (pretend)",
    ]
