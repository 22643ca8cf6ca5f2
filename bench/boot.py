"""Cold boot to ready through boxui against the same guest started by a bare QEMU.

Target (issue): boxui adds under 5 % (ratio <= 1.05).

    .venv/bin/python bench/boot.py [--runs N] [--cache DIR]

Both sides boot the same image, memory, vcpus, accel and kernel command line:
- bare: `qemu-system-x86_64` with boxui's argv, launched directly; the clock stops when
  the readiness marker `BOXUI-READY <boot_id>` appears on the serial console;
- boxui: `Supervisor.start_machine` on a created machine, which also writes the events,
  state.json, a fresh per-machine initrd, waits for the marker *and* an SSH banner; the
  clock stops when it returns with the machine `ready`.
Runs alternate (bare, boxui, bare, ...) so that load on the host hits both alike; the
table shows every run and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.drivers.qemu.accel import resolve_accel
from backend.drivers.qemu.cmdline import QemuConfig, build_argv, find_qemu
from backend.drivers.qemu.driver import QemuDriver
from backend.drivers.qemu.host_memory import preexec_for
from backend.drivers.qemu.readiness import wait_for_ready
from backend.guest.image_builder import build_default_image
from backend.guest.machine_seed import create_machine_keys, write_machine_initrd
from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.ports import pick_free_port
from backend.supervision.supervisor import Supervisor

MEMORY_MIB = 256


async def bare_boot(cache: Path, work: Path, index: int) -> float:
    image = await build_default_image(cache)
    accel = resolve_accel("auto")
    machine_dir = work / f"bare{index}"
    machine_dir.mkdir(mode=0o700)
    keys = create_machine_keys(machine_dir)
    initrd = write_machine_initrd(image, machine_dir, keys)
    boot_id = secrets.token_hex(6)
    config = QemuConfig(
        name=f"bare{index}", vcpus=1, memory_mib=MEMORY_MIB, kernel=image.kernel,
        initrd=initrd, accel=accel.accel, ssh_port=pick_free_port(),
        console_log=machine_dir / "console.log", qmp_socket=machine_dir / "qmp.sock",
        pidfile=machine_dir / "qemu.pid", boot_id=boot_id, tsc_khz=accel.tsc_khz,
    )
    argv = build_argv(config, find_qemu())
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True,
                                                preexec_fn=preexec_for(config.accel))
    await proc.wait()
    await wait_for_ready(config.console_log, boot_id, timeout=120)
    elapsed = time.perf_counter() - started
    pid = int(config.pidfile.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return elapsed


async def boxui_boot(cache: Path, work: Path, index: int) -> float:
    home = work / f"home{index}"
    engine = await Engine.open(home)
    try:
        (home / "images").symlink_to(cache)  # share the built image, not rebuild it
        driver = QemuDriver()
        supervisor = Supervisor(engine, driver, DefaultBootFiles(engine.dirs.images))
        async with supervisor.running(recover=None):
            await engine.create_machine(MachineSpec(name="vm", memory_mib=MEMORY_MIB))
            started = time.perf_counter()
            await supervisor.start_machine("vm")
            elapsed = time.perf_counter() - started
            await supervisor.stop_machine("vm", force=True)
        return elapsed
    finally:
        await engine.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(
        os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache")))
    args = parser.parse_args()
    await build_default_image(args.cache)  # build once, outside the timings
    bare: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bxb-", dir="/tmp") as tmp:
        work = Path(tmp)
        for i in range(args.runs):
            bare.append(await bare_boot(args.cache, work, i))
            ours.append(await boxui_boot(args.cache, work, i))
    accel = resolve_accel("auto")
    print(f"cold boot to ready, {MEMORY_MIB} MiB, 1 vcpu, accel {accel.accel}, "
          f"{args.runs} runs each (alternating)")
    print(f"{'run':>4} {'bare qemu':>10} {'boxui':>10}")
    for i, (b, o) in enumerate(zip(bare, ours, strict=True), 1):
        print(f"{i:>4} {b:>9.2f}s {o:>9.2f}s")
    mb, mo = statistics.median(bare), statistics.median(ours)
    ratio = mo / mb
    print(f"{'med':>4} {mb:>9.2f}s {mo:>9.2f}s   ratio {ratio:.3f} (target <= 1.05: "
          f"{'OK' if ratio <= 1.05 else 'MISSED'})")


if __name__ == "__main__":
    asyncio.run(main())
