"""Build hosts (issue 15): a Debian machine's cold boot, through boxui and bare, its
memory, and a Debian template clone's restore, in one run, as one table.

    .venv/bin/python bench/build_host.py [--home DIR] [--image debian-12] [--memory MIB]
                                         [--no-template]

The image comes from `--home`'s image store (default `$BOXUI_HOME`, else
~/.local/share/boxui): built there first if it is missing (`boxui image build`), so the
builds stay outside the timings. Every machine lives in a throw-away state dir whose
`images` is a link to that store. Rows:
- bare qemu: the same kernel, the same per-machine initrd and a fresh qcow2 overlay on
  the same image (made before the clock starts), launched by `qemu-system-x86_64` with
  boxui's argv; the clock stops at the same point as boxui's: `BOXUI-READY <boot_id>`
  on the serial console, then an SSH banner on the forwarded port;
- boxui: `Supervisor.start_machine` on a machine just created, which also writes its
  initrd and makes its disk, writes the events and state, and waits for the marker and
  an SSH banner; target: ratio to bare <= 1.05, and under 8 s;
- idle PSS: of that machine's QEMU, once the guest's systemd says it is running (asked
  over SSH) and a few seconds have passed;
- template clone: a snapshot template of the image (one build: boot, save memory and
  freeze the disk), then a clone made from it, timed through `start_machine` to ready
  (its own overlay on the frozen disk, restored, RNG, clock and name freshened); target
  under 1 s.
The host is shared (2 cores, other helpers' work): `uptime` is printed beside the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.drivers.qemu.accel import resolve_accel
from backend.drivers.qemu.cmdline import QemuConfig, build_argv, find_qemu
from backend.drivers.qemu.driver import QemuDriver
from backend.drivers.qemu.readiness import wait_for_ready
from backend.drivers.ssh_probe import wait_for_banner
from backend.guest.machine_seed import load_machine_keys
from backend.images.builder import build_image
from backend.images.store import find_image
from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.ports import pick_free_port
from backend.supervision.ssh_access import exec_command
from backend.supervision.supervisor import Supervisor
from backend.template_builds.from_source import build_from_source
from backend.templates.machine_from_template import spec_from_template

BOOT_TIMEOUT = 600.0
SETTLE_SECONDS = 5.0


def say(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


async def ensure_image(home: Path, name: str) -> None:
    dirs = StateDir(home)
    if find_image(dirs, name) is None:
        print(f"building image {name} in {home} (outside the timings)")
        await build_image(dirs, name, lambda p: print(f"  {p.step}: {p.message}"))


async def bare_boot(images: Path, work: Path, image: str, memory: int) -> float:
    """The same boot without boxui: files made first, then the clock, QEMU, marker."""
    machine_dir = work
    machine_dir.mkdir(mode=0o700)
    spec = MachineSpec(name="bare", image=image, memory_mib=memory)
    files = await DefaultBootFiles(images).prepare(spec, machine_dir)
    accel = resolve_accel("auto")
    boot_id = secrets.token_hex(6)
    config = QemuConfig(
        name="bare", vcpus=1, memory_mib=memory, kernel=files.kernel, initrd=files.initrd,
        append=files.append, accel=accel.accel, ssh_port=pick_free_port(),
        console_log=machine_dir / "console.log", qmp_socket=machine_dir / "qmp.sock",
        pidfile=machine_dir / "qemu.pid", boot_id=boot_id, tsc_khz=accel.tsc_khz,
        disk_image=files.disk_image)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*build_argv(config, find_qemu()),
                                                start_new_session=True)
    await proc.wait()
    pid = int(config.pidfile.read_text())
    try:
        await wait_for_ready(config.console_log, boot_id, timeout=BOOT_TIMEOUT)
        await wait_for_banner(config.ssh_port, lambda: False)  # ready: SSH answers
        return time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def idle_pss(sup: Supervisor, name: str) -> float:
    """PSS (MiB) of the machine's QEMU once its systemd has finished starting: the guest
    boots to `boxui-boot.target` (sshd) and starts `default.target` once ready, so
    `is-system-running --wait` could answer before that second part has run; starting
    `default.target` again waits for its queued job instead."""
    machine_dir = sup.engine.dirs.machine_dir(name)
    handle = sup.handles[name]
    out = io.BytesIO()
    await exec_command(handle.ssh_port, load_machine_keys(machine_dir), machine_dir,
                       ["systemctl", "start", "default.target"], out, out,
                       timeout=BOOT_TIMEOUT, connect_timeout=BOOT_TIMEOUT)
    await asyncio.sleep(SETTLE_SECONDS)
    return float(psutil.Process(handle.pid).memory_full_info().pss) / 2**20


async def start_timed(sup: Supervisor, spec: MachineSpec) -> float:
    await sup.engine.create_machine(spec)
    started = time.perf_counter()
    await sup.start_machine(spec.name)
    return time.perf_counter() - started


async def clone_restore(sup: Supervisor, image: str, memory: int) -> tuple[float, float]:
    """(template build seconds, clone restore-to-ready seconds)."""
    dirs = sup.engine.dirs
    source = dirs.root / "bench.toml"
    source.write_text(f'template_id = "bench"\nimage = "{image}"\n[[variants]]\n'
                      f'role = "host"\nvcpus = 1\nmemory_mib = {memory}\n')
    started = time.perf_counter()
    await build_from_source(dirs, str(source), snapshot=True, driver=sup.driver,
                            accel=resolve_accel("auto"))
    built = time.perf_counter() - started
    restored = await start_timed(sup, spec_from_template(dirs, "clone", "bench"))
    await sup.stop_machine("clone", force=True)
    return built, restored


async def paired_boots(sup: Supervisor, images: Path, work: Path,
                       args: argparse.Namespace) -> dict[str, float]:
    """Medians of `--runs` boots each way, bare and boxui taking turns, so a slow spell
    of the shared host hits both alike; a systemd boot under TCG varies by a second or
    two from one boot to the next, which one boot each could not tell from boxui's cost.
    Only one guest runs at a time; the last boxui machine is left running for the PSS
    figure."""
    bare: list[float] = []
    boxui: list[float] = []
    spec = MachineSpec(name="deb", image=args.image, memory_mib=args.memory)
    for run in range(args.runs):
        say(f"boot pair {run + 1}/{args.runs}: bare qemu")
        bare.append(await bare_boot(images, work / f"bare{run}", args.image, args.memory))
        say(f"bare: {bare[-1]:.2f} s; boxui")
        boxui.append(await start_timed(sup, spec))
        say(f"boxui: {boxui[-1]:.2f} s")
        if run + 1 < args.runs:  # its housekeeping after ready must not slow the next
            await sup.delete_machine("deb", force=True)
    return {"bare": statistics.median(bare), "boxui": statistics.median(boxui),
            "bare_all": max(bare) - min(bare), "boxui_all": max(boxui) - min(boxui)}


async def measure(args: argparse.Namespace, work: Path) -> dict[str, float]:
    images = args.home / "images"
    home = work / "h"
    engine = await Engine.open(home)
    (home / "images").symlink_to(images.resolve())
    sup = Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images))
    try:
        async with sup.running(recover=None):
            figures = await paired_boots(sup, images, work, args)
            say("waiting for systemd, then PSS")
            figures["pss"] = await idle_pss(sup, "deb")
            await sup.stop_machine("deb", force=True)
            if args.template:
                say("template build, then a clone")
                figures["template_build"], figures["clone"] = await clone_restore(
                    sup, args.image, args.memory)
    finally:
        await engine.close()
    return figures


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def report(args: argparse.Namespace, f: dict[str, float], uptime: str) -> None:
    accel = resolve_accel("auto")
    print(f"build hosts: image {args.image}, 1 vCPU, {args.memory} MiB, accel {accel.accel}")
    print(f"uptime: {uptime}")
    print()
    ratio = f["boxui"] / f["bare"]
    rows = [
        (f"cold boot to ready, bare (median {args.runs})", f"{f['bare']:.2f} s",
         f"spread {f['bare_all']:.2f} s"),
        (f"cold boot to ready, boxui (median {args.runs})", f"{f['boxui']:.2f} s",
         f"< 8 s: {verdict(f['boxui'] < 8)}"),
        ("ratio boxui / bare", f"{ratio:.3f}", f"<= 1.05: {verdict(ratio <= 1.05)}"),
    ]
    if "clone" in f:
        rows.append(("template clone restore to ready", f"{f['clone']:.2f} s",
                     f"< 1 s: {verdict(f['clone'] < 1)}"))
    rows.append(("idle machine's QEMU, PSS", f"{f['pss']:.0f} MiB", ""))
    print(f"{'figure':<42}{'value':>10}   target")
    for label, value, target in rows:
        print(f"{label:<42}{value:>10}   {target}")
    if "template_build" in f:
        print(f"(template build, one boot + save, outside the timings: "
              f"{f['template_build']:.1f} s)")


def main() -> None:
    default_home = os.environ.get("BOXUI_HOME") or str(Path.home() / ".local/share/boxui")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(default_home))
    parser.add_argument("--image", default="debian-12")
    parser.add_argument("--memory", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3,
                        help="boots each way, bare and boxui in turn; medians are shown")
    parser.add_argument("--no-template", dest="template", action="store_false")
    args = parser.parse_args()
    asyncio.run(ensure_image(args.home, args.image))
    work = Path(tempfile.mkdtemp(prefix="bxh-", dir="/tmp"))  # short: QMP socket paths
    try:
        figures = asyncio.run(measure(args, work))
        uptime = subprocess.run(["uptime"], capture_output=True, text=True,
                                check=False).stdout.strip()
        report(args, figures, uptime)
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(work) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
