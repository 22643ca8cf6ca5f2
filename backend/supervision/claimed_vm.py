"""A warm pool member handed to a machine: what the supervisor needs to take it over.

A member is a guest already restored from its template revision and past its first SSH
connection. Claiming moves its files (keys, console log) into the machine's directory
and its socket directory to the machine's run dir with renames: QEMU keeps its open
descriptors and its listening sockets move with their directory, so nothing restarts.
Its command line keeps the member's name and QMP path, so the record says both
(`launched_as`), and re-adoption after a crash proves the process by them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.drivers.base import VmHandle
from backend.state.atomic_write import atomic_write_bytes
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.boot_plan import Forwards, RecordUpdate, forwards_record
from backend.supervision.pool_paths import LAUNCHED_FILE, MEMBER_FILE
from backend.templates.restore_plan import RestorePlan


@dataclass(frozen=True)
class ClaimedVm:
    member: str
    #: the running guest, as the driver holds it (under the member's name)
    handle: VmHandle
    member_dir: Path
    run_dir: Path
    restore: RestorePlan
    #: told when the claim has ended (ready or failed): a pool refills only then, so a
    #: refill's restore does not compete with the claim it replaces for the CPU
    settled: Callable[[], None] = field(default=lambda: None)

    def move_into(self, machine_dir: Path, run_dir: Path) -> None:
        """Give the machine the member's files and sockets (renames, same filesystem)."""
        for entry in os.scandir(self.member_dir):
            if entry.name != MEMBER_FILE:
                os.replace(entry.path, machine_dir / entry.name)
        if run_dir.exists():  # an earlier boot's sockets, all dead: the machine is stopped
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # moved by the rename below, in the same step as the sockets: from then on the
        # machine's run dir names the member its QEMU was launched as (not durable: a
        # power cut ends that QEMU too)
        atomic_write_bytes(self.run_dir / LAUNCHED_FILE,
                           json.dumps({"member": self.member}).encode(), durable=False)
        os.rename(self.run_dir, run_dir)

    def release(self) -> None:
        """The claim is recorded in the machine's own record: the pool's is done with."""
        shutil.rmtree(self.member_dir, ignore_errors=True)

    def booting_record(self, handle: VmHandle, forwards: Forwards) -> RecordUpdate:
        """The record as the claim begins: the member's process, which is running already,
        so a crash from here on re-adopts it rather than losing it."""

        def apply(record: RuntimeRecord) -> None:
            record.boot_id, record.ssh_port, record.accel = (handle.boot_id, handle.ssh_port,
                                                             handle.accel)
            record.pid, record.process_start_time = handle.pid, handle.start_time
            record.ports = forwards_record(forwards)
            record.restored_from = self.restore.label
            record.rng_reseeded = record.rng_note = None
            record.clock_set = record.clock_note = None
            record.hostname_set = record.hostname_note = None
            record.launched_as, record.launched_run_dir = self.member, str(self.run_dir)

        return apply
