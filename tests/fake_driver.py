"""The stand-in driver as the tests use it, and boot files and an accelerator to go with it.

`FakeDriver` is `backend.drivers.standin.StandInDriver` with quiet stand-ins (they sleep,
and outlive a killed daemon so the next one can adopt them), a fixed guest memory, and a
record of the calls the supervisor made, which tests assert on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend.drivers.base import (
    AdoptRefusal,
    AdoptRequest,
    ExitInfo,
    GuestMemory,
    LaunchSpec,
    StopTimeouts,
    VmHandle,
)
from backend.drivers.qemu.accel import AccelChoice
from backend.drivers.standin import GuestPlan, StandInDriver
from backend.state.accelerator import AccelRequest
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import BootFiles, BootFilesProvider, ProgressFn

#: what a test's guest plan was called before the stand-in driver had plans
Script = GuestPlan

__all__ = ["FakeBootFiles", "FakeDriver", "Script", "fixed_accel"]


class FakeDriver(StandInDriver):
    """Quiet stand-ins; `calls` lists (call, machine) in order, `starts` counts starts."""

    def __init__(self) -> None:
        super().__init__(guest_memory_reply=GuestMemory(256 << 20, 200 << 20))
        self.calls: list[tuple[str, str]] = []
        self.starts: dict[str, int] = {}

    def script(self, name: str) -> GuestPlan:
        """The plan of machine `name`, to change before it boots."""
        return self.plan(name)

    async def start(self, spec: LaunchSpec) -> VmHandle:
        self.calls.append(("start", spec.name))
        self.starts[spec.name] = self.starts.get(spec.name, 0) + 1
        return await super().start(spec)

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        self.calls.append(("wait_ready", handle.name))
        await super().wait_ready(handle, timeout)

    async def stop(self, handle: VmHandle, timeouts: StopTimeouts) -> ExitInfo:
        self.calls.append(("stop", handle.name))
        return await super().stop(handle, timeouts)

    async def kill(self, handle: VmHandle) -> None:
        self.calls.append(("kill", handle.name))
        await super().kill(handle)

    async def adopt(self, request: AdoptRequest) -> VmHandle | AdoptRefusal:
        self.calls.append(("adopt", request.name))
        return await super().adopt(request)


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


def fixed_accel(requested: AccelRequest) -> AccelChoice:
    return AccelChoice(accel="tcg", reason="fixed for tests")
