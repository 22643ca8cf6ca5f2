"""The hypervisor driver interface.

The supervisor only ever talks to a VM through these few calls, so the same lifecycle,
recovery and restart code runs against QEMU in the product and against the stand-in
driver (`standin`) in tests and `boxui demo`.
A driver owns no policy: it starts, stops, kills, probes and adopts, and reports what
happened; deciding what that means for the machine's state is the supervisor's job.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from backend.drivers.errors import DriverError
from backend.state.accelerator import Accel
from backend.state.mount_spec import MountSpec
from backend.state.port_mapping import Protocol

#: "hung": killed by boxui because it stopped answering (its QMP, or its guest's probe)
ExitKind = Literal["guest-shutdown", "guest-reset", "guest-panic", "host-stop", "vanished",
                   "hung"]


@dataclass(frozen=True)
class DriverCapabilities:
    name: str
    snapshots: bool
    graceful_stop: bool
    accels: tuple[Accel, ...]


@dataclass(frozen=True)
class GuestRamFile:
    """Guest RAM kept in a file rather than in anonymous memory.

    Shared, the guest's writes go to the file: a snapshot build, whose RAM then *is*
    the snapshot's memory and never has to be copied into the state file. Private, the
    file is mapped copy-on-write: a restore reads only the pages the guest touches,
    clones of one snapshot share the pages none of them changed, and nothing a clone
    does can reach the template's file.
    """

    path: Path
    shared: bool


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a driver needs to launch one machine."""

    name: str
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    append: str
    accel: Accel
    ssh_port: int
    boot_id: str
    machine_dir: Path
    run_dir: Path
    console_log: Path
    #: the host's TSC rate, passed to TCG guests whose clock calibration otherwise hangs
    tsc_khz: int | None = None
    disk_image: Path | None = None
    #: extra (host port, guest port) TCP forwards on 127.0.0.1, beside SSH's
    port_forwards: tuple[tuple[int, int], ...] = ()
    #: the same for UDP
    udp_forwards: tuple[tuple[int, int], ...] = ()
    #: restore this memory snapshot instead of booting (see `save_snapshot`)
    restore_from: Path | None = None
    #: the whole kernel command line, verbatim: a restore must repeat the snapshot's
    kernel_cmdline: str | None = None
    #: host end of a virtio-serial port for the guest's restore agent (snapshot builds
    #: and restores; see `backend.supervision.restore_agent`)
    agent_socket: Path | None = None
    #: guest RAM in a file (see `GuestRamFile`); None: anonymous memory
    ram_file: GuestRamFile | None = None
    #: host folders shared with the guest (virtio-9p), in the spec's order
    mounts: tuple[MountSpec, ...] = ()


@dataclass(frozen=True)
class PendingRestore:
    """A snapshot QEMU was started to load (`-incoming defer`) but has not loaded yet:
    `wait_ready` names it over QMP by `fd`, the descriptor QEMU inherited, because the
    file is opened by boxui, never by a path QEMU would resolve itself."""

    source: Path
    fd: int


@dataclass
class VmHandle:
    """A live hypervisor process as the supervisor knows it.

    `pid` and `start_time` together identify the process: a pid alone can be reused by an
    unrelated program after the VM dies. The fields after `qmp_socket` are what the
    driver that started the VM must remember for later calls; a VM adopted from an
    earlier boxui has none of them.
    """

    name: str
    pid: int
    start_time: float
    ssh_port: int
    boot_id: str
    accel: Accel
    console_log: Path
    qmp_socket: Path
    #: the kernel command line the guest booted with, which a snapshot must record
    kernel_cmdline: str = ""
    #: guest RAM kept in a file (a snapshot's memory lives there, not in the state file)
    ram_file: GuestRamFile | None = None
    #: the snapshot still to be loaded before the guest runs
    restore: PendingRestore | None = None


@dataclass(frozen=True)
class AdoptRequest:
    """A VM an earlier boxui recorded: what `adopt` must prove is still that VM, and
    what the handle it returns carries."""

    name: str
    pid: int
    start_time: float
    ssh_port: int
    boot_id: str
    accel: Accel
    run_dir: Path
    console_log: Path
    #: the identity arguments to prove, when they are not `name`'s and `run_dir`'s (a
    #: claimed warm pool member keeps the command line it was launched with)
    identity: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StopTimeouts:
    """How long each step of a graceful stop may take before the next, harsher one: a
    hung hypervisor answers none of the gentle ones, and a stop must still end."""

    acpi: float = 30.0
    quit: float = 5.0
    term: float = 5.0
    kill: float = 5.0

    @property
    def total(self) -> float:
        return self.acpi + self.quit + self.term + self.kill


@dataclass(frozen=True)
class ExitInfo:
    """How a VM's process ended, as far as the driver could tell."""

    kind: ExitKind
    detail: str

    @property
    def is_failure(self) -> bool:
        return self.kind not in ("guest-shutdown", "host-stop")


@dataclass(frozen=True)
class ProbeResult:
    alive: bool
    responsive: bool
    status: str


@dataclass(frozen=True)
class AdoptRefusal:
    """Why a recorded process was not adopted; `reason` is shown to the user."""

    reason: str


@dataclass(frozen=True)
class SnapshotSaved:
    """A memory snapshot a driver wrote, and what a restore must repeat."""

    path: Path
    state_bytes: int  # size of the file written
    memory_bytes: int  # guest memory it covers
    kernel_cmdline: str
    seconds: float
    #: the guest's RAM file, when its memory was kept there rather than in `path`
    ram_file: Path | None = None
    ram_file_bytes: int = 0  # disk the RAM file takes (it is sparse)


@dataclass(frozen=True)
class GuestMemory:
    total_bytes: int | None
    free_bytes: int | None


class HypervisorDriver(abc.ABC):
    @abc.abstractmethod
    def capabilities(self) -> DriverCapabilities: ...

    @abc.abstractmethod
    async def start(self, spec: LaunchSpec) -> VmHandle:
        """Launch the VM detached (it must outlive boxui) and return once its process
        exists; readiness is awaited separately with `wait_ready`."""

    @abc.abstractmethod
    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        """Return when the guest is ready (marker seen, SSH answering); raise
        `DriverError` if it dies or the timeout passes first."""

    @abc.abstractmethod
    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        """Return when the VM's process has ended, being told so by the OS rather than
        polling (within about a second)."""

    @abc.abstractmethod
    async def stop(self, handle: VmHandle, timeouts: StopTimeouts) -> ExitInfo:
        """Graceful stop: ACPI power-off, then QMP `quit`, then SIGTERM, then SIGKILL,
        each given its timeout; `detail` says which of them ended the VM (see
        `stop_escalation`)."""

    @abc.abstractmethod
    async def kill(self, handle: VmHandle) -> None:
        """Kill the process at once (only if it is still the VM we started) and return
        once it is gone, or raise `DriverError` if it outlives SIGKILL's timeout."""

    @abc.abstractmethod
    async def probe(self, handle: VmHandle) -> ProbeResult: ...

    @abc.abstractmethod
    async def adopt(self, request: AdoptRequest) -> VmHandle | AdoptRefusal:
        """Take over a VM started by an earlier boxui, only if it is provably that VM."""

    @abc.abstractmethod
    async def guest_memory(self, handle: VmHandle) -> GuestMemory: ...

    async def save_snapshot(self, handle: VmHandle, target: Path) -> SnapshotSaved:
        """Pause the VM and save its device state to `target`, and its memory too unless
        the VM runs with a shared RAM file (which then holds it); the VM stays paused.
        Only drivers whose capabilities say `snapshots` implement it."""
        raise DriverError(f"the {self.capabilities().name} driver cannot save snapshots")

    async def add_forward(self, handle: VmHandle, protocol: Protocol, host: int,
                          guest: int) -> None:
        """Forward 127.0.0.1:`host` to the guest's `guest` port on the running VM, with no
        restart; `PortInUseError` if the hypervisor cannot bind the host port."""
        raise DriverError(f"the {self.capabilities().name} driver cannot change port "
                          "forwards of a running machine")

    async def remove_forward(self, handle: VmHandle, protocol: Protocol, host: int) -> None:
        """Drop the running VM's forward of 127.0.0.1:`host` (no error if it has none:
        the goal, no such forward, holds)."""
        raise DriverError(f"the {self.capabilities().name} driver cannot change port "
                          "forwards of a running machine")

    def renamed(self, handle: VmHandle, name: str, console_log: Path,
                qmp_socket: Path) -> VmHandle:
        """The handle of a running VM that a machine of another name took over (a warm
        pool member claimed): its files moved, its process and connections did not."""
        return replace(handle, name=name, console_log=console_log, qmp_socket=qmp_socket)

    async def close(self, handle: VmHandle) -> None:  # noqa: B027 - optional hook
        """Drop any connection to the VM without affecting it (boxui is going away)."""
