"""FakeDriver: a test double of the hypervisor driver, built on the same interface.

It launches a real, tiny stand-in process per machine (a sleeping Python whose command
line carries the same identity arguments QEMU would), so pids, start times, pidfds,
adoption checks and "process died" are all real; only the guest is imaginary. Behaviour
is scripted per machine: boot delay, boot failure, crash after a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
from backend.drivers.process_identity import (
    PidWatch,
    same_process,
    start_time_of,
    verify_identity,
)
from backend.drivers.qemu.accel import AccelChoice
from backend.drivers.qemu.driver import identity_args
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import BootFiles, BootFilesProvider, ProgressFn

STAND_IN = "import time, sys; sys.stdout.close(); time.sleep(10**6)"


@dataclass
class Script:
    boot_delay: float = 0.0
    fail_boot: str | None = None  # error message
    die_after: float | None = None  # process exits by itself this long after start
    exit_kind: str = "vanished"


@dataclass
class FakeDriver(HypervisorDriver):
    scripts: dict[str, Script] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    _watches: dict[int, PidWatch] = field(default_factory=dict)
    _stopping: set[int] = field(default_factory=set)
    _procs: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    _spawned: dict[int, float] = field(default_factory=dict)

    def script(self, name: str) -> Script:
        return self.scripts.setdefault(name, Script())

    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities(name="fake", snapshots=False, graceful_stop=True,
                                  accels=("tcg",))

    async def start(self, spec: LaunchSpec) -> VmHandle:
        self.calls.append(("start", spec.name))
        self.starts[spec.name] = self.starts.get(spec.name, 0) + 1
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STAND_IN, *identity_args(spec.name, spec.run_dir),
            start_new_session=True, stdout=asyncio.subprocess.DEVNULL,
        )
        started = start_time_of(proc.pid)
        assert started is not None
        self._procs[proc.pid] = proc
        self._spawned[proc.pid] = started
        self._watches[proc.pid] = PidWatch(proc.pid)
        handle = VmHandle(name=spec.name, pid=proc.pid, start_time=started,
                          ssh_port=spec.ssh_port, boot_id=spec.boot_id, accel=spec.accel,
                          console_log=spec.console_log, qmp_socket=spec.run_dir / "qmp.sock")
        script = self.script(spec.name)
        if script.die_after is not None:
            asyncio.get_running_loop().call_later(
                script.die_after, lambda: self._watches[proc.pid].send(signal.SIGKILL)
                if proc.pid in self._watches else None)
        return handle

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        self.calls.append(("wait_ready", handle.name))
        script = self.script(handle.name)
        watch = self._watches[handle.pid]
        done = asyncio.ensure_future(watch.wait())
        try:
            await asyncio.wait({done}, timeout=min(script.boot_delay, timeout))
        finally:
            done.cancel()
        if watch.exited:
            raise DriverError(f"{handle.name}: process exited before the guest was ready")
        if script.fail_boot:
            raise DriverError(script.fail_boot)
        if script.boot_delay > timeout:
            raise DriverError(f"{handle.name}: not ready after {timeout:.0f} s")

    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        watch = self._watches.get(handle.pid)
        if watch is not None:
            await watch.wait()
        proc = self._procs.pop(handle.pid, None)
        if proc is not None:
            await proc.wait()
        if handle.pid in self._stopping:
            return ExitInfo("host-stop", "stopped by boxui")
        kind = self.script(handle.name).exit_kind
        return ExitInfo(kind, "the stand-in process exited")  # type: ignore[arg-type]

    async def stop(self, handle: VmHandle, timeout: float) -> ExitInfo:
        self.calls.append(("stop", handle.name))
        self._stopping.add(handle.pid)
        watch = self._watches.get(handle.pid)
        if watch is not None:
            watch.send(signal.SIGTERM)
            await watch.wait()
        return await self.wait_exit(handle)

    async def kill(self, handle: VmHandle) -> None:
        self.calls.append(("kill", handle.name))
        self._stopping.add(handle.pid)
        watch = self._watches.get(handle.pid)
        if watch is not None:
            watch.send(signal.SIGKILL)
            await watch.wait()

    async def probe(self, handle: VmHandle) -> ProbeResult:
        watch = self._watches.get(handle.pid)
        alive = watch is not None and not watch.exited
        return ProbeResult(alive, alive, "running" if alive else "exited")

    async def adopt(
        self, name: str, pid: int, start_time: float, ssh_port: int, boot_id: str,
        accel: str, run_dir: Path, console_log: Path,
    ) -> VmHandle | AdoptRefusal:
        self.calls.append(("adopt", name))
        problem = verify_identity(pid, start_time, identity_args(name, run_dir))
        if problem is not None:
            return AdoptRefusal(problem)
        self._watches[pid] = PidWatch(pid)
        return VmHandle(name=name, pid=pid, start_time=start_time, ssh_port=ssh_port,
                        boot_id=boot_id, accel=accel, console_log=console_log,
                        qmp_socket=run_dir / "qmp.sock")

    async def guest_memory(self, handle: VmHandle) -> GuestMemory:
        return GuestMemory(256 << 20, 200 << 20)

    async def close(self, handle: VmHandle) -> None:
        watch = self._watches.pop(handle.pid, None)
        if watch is not None:
            watch.close()

    def kill_all(self) -> None:
        """Test clean-up: no stand-in outlives its test (checked by start time, so a
        reused pid is never hit)."""
        for pid, started in self._spawned.items():
            if same_process(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class FakeBootFiles(BootFilesProvider):
    """Boot files for the fake driver, which boots nothing. With a `gate`, preparing
    reports a "pack" phase and waits for the gate, as a first image build would."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate

    async def prepare(self, spec: MachineSpec, machine_dir: Path,
                      progress: ProgressFn | None = None) -> BootFiles:
        if self.gate is not None:
            if progress is not None:
                progress("pack", "initramfs 3 of 7 MiB")
            await self.gate.wait()
        return BootFiles(Path("/fake/vmlinuz"), Path("/fake/initrd"), "")


def fixed_accel(requested: str) -> AccelChoice:
    return AccelChoice(accel="tcg", reason="fixed for tests")
