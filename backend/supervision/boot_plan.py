"""What one boot of a machine is made of, and what it writes into the runtime record.

Everything in a `BootPlan` is decided before the machine's state changes, so a boot that
cannot happen (a snapshot that does not fit the machine) is refused, not half-started.
The record updates here are the only ones a boot makes: the plan when it begins, the
ports again if a lost port race moved them, and the process once it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.drivers.base import GuestRamFile, LaunchSpec, VmHandle
from backend.drivers.qemu.accel import AccelChoice
from backend.state.machine_spec import MachineSpec
from backend.state.port_mapping import Protocol, forward_key
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import StateDir
from backend.supervision.boot_files import BootFiles
from backend.supervision.restore_agent import AGENT_SOCKET
from backend.templates.restore_plan import RestorePlan

RecordUpdate = Callable[[RuntimeRecord], None]
Forwards = tuple[tuple[int, int, Protocol], ...]  # (host port, guest port, protocol)


@dataclass
class BootPlan:
    """One boot. `restore` is None for a cold boot. The forwards are re-picked when a
    lost port race moves the SSH port."""

    spec: MachineSpec
    choice: AccelChoice
    restore: RestorePlan | None
    boot_id: str
    ssh_port: int
    forwards: Forwards

    def launch_spec(self, dirs: StateDir, files: BootFiles, run_dir: Path,
                    port: int) -> LaunchSpec:
        spec, restore = self.spec, self.restore
        return LaunchSpec(
            name=spec.name, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
            kernel=files.kernel, initrd=files.initrd, append=files.append,
            accel=self.choice.accel, ssh_port=port, boot_id=self.boot_id,
            machine_dir=dirs.machine_dir(spec.name), run_dir=run_dir,
            console_log=dirs.console_log(spec.name), tsc_khz=self.choice.tsc_khz,
            disk_image=files.disk_image,
            port_forwards=tuple((h, g) for h, g, proto in self.forwards if proto == "tcp"),
            udp_forwards=tuple((h, g) for h, g, proto in self.forwards if proto == "udp"),
            restore_from=restore.snapshot_file if restore else None,
            kernel_cmdline=restore.snapshot.boot_args if restore else None,
            agent_socket=run_dir / AGENT_SOCKET if restore else None,
            ram_file=GuestRamFile(restore.ram_file, shared=False)
            if restore and restore.ram_file else None,
            mounts=tuple(spec.mounts),
        )

    def booting_record(self) -> RecordUpdate:
        """The record as the boot begins: this boot's ids and ports, nothing of the last."""

        def apply(record: RuntimeRecord) -> None:
            record.boot_id, record.ssh_port = self.boot_id, self.ssh_port
            record.accel = self.choice.accel
            record.pid = record.process_start_time = None
            record.ports = forwards_record(self.forwards)
            record.restored_from = self.restore.label if self.restore else None
            record.launched_as = record.launched_run_dir = None
            record.rng_reseeded = record.rng_note = None
            record.clock_set = record.clock_note = None
            record.hostname_set = record.hostname_note = None

        return apply


def ports_record(ssh_port: int, forwards: Forwards) -> RecordUpdate:
    def apply(record: RuntimeRecord) -> None:
        record.ssh_port = ssh_port
        record.ports = forwards_record(forwards)

    return apply


def forwards_record(forwards: Forwards) -> dict[str, int]:
    """The record's `ports`: guest port (`80`, `53/udp`) -> host port."""
    return {forward_key(guest, proto): host for host, guest, proto in forwards}


def process_record(handle: VmHandle) -> RecordUpdate:
    def apply(record: RuntimeRecord) -> None:
        record.pid = handle.pid
        record.process_start_time = handle.start_time
        record.ssh_port = handle.ssh_port

    return apply


def adopted_process_record(handle: VmHandle) -> RecordUpdate:
    """An adopted process keeps the ports its record already names."""

    def apply(record: RuntimeRecord) -> None:
        record.pid, record.process_start_time = handle.pid, handle.start_time

    return apply


def clear_process(record: RuntimeRecord) -> None:
    record.pid = record.process_start_time = None
