"""Host memory of idle guests, per VM (issue 16), and what the memory options cost cold boot.

Targets: an idle default guest costs at most 64 MiB PSS on the host; ten idle cold-booted
ones at most 640 MiB together; cold boot no more than 5 % slower than before the memory
work (Debian's kernel, no memory options: the boot the target was set against). The
previous configuration (s24's: boxui's kernel with a 32 MiB translation buffer) is timed
in the same run and its ratio printed without a target: what the current cap costs.

    .venv/bin/python bench/memory.py [--count 10] [--memory 256] [--idle 10]
                                     [--boot-runs 3] [--before] [--debian] [--cache DIR]

The default guest boots boxui's own kernel when bin/setup has built it
(`backend/guest/small_kernel.py`), else Debian's; the first line says which.

From one run, each through boxui's supervisor (`Supervisor.start_machine`):
- --count default machines cold-booted one after another, left idle for --idle seconds
  with all of them running, then PSS and RSS of each QEMU process read from
  /proc/PID/smaps_rollup; then they are stopped;
- the same for --count machines restored from one template snapshot (built first,
  outside the figures);
- pooled: --count warm pool members of that template (restored, each past one SSH
  login, idle), sampled alike (`pooled_group`);
- with --before, --count more cold boots launched as before the memory options (plain
  `-accel tcg`, THP allowed, no free page reporting), for the difference in the same run;
- with --debian, --count more cold boots of the default guest on Debian's kernel.
PSS splits each shared page among the processes mapping it: the guest image is a private
copy made for this run, so only this run's machines share its kernel file; the QEMU
binary and its libraries are shared with any other QEMU on the host (a few MiB). Each
group's first machine's PSS is also broken down by mapping (guest RAM, TCG's buffer,
the kernel file, QEMU's heap, libraries), from /proc/PID/smaps.

Cold boot: bare QEMU boots of the guest to its ready marker, alternating (`BOOT_VARIANTS`)
Debian's kernel without the memory options ("before": no `tb-size`, THP allowed, no free
page reporting), boxui's kernel with the previous options ("previous": s24's
`tb-size=32`) and boxui's argv and kernel as they are now,
--boot-runs each; the medians of the wall time compared (now / before, now / previous),
QEMU's CPU seconds beside. The breakdown ends with the first machine's `info jit`: how
much of TCG's buffer its code filled and how often it was flushed.

--tb-size N runs "now" (every group and the "now" boots) with TCG's buffer at N MiB
instead of `cmdline.tb_size_mib`'s: the trade between memory and boot time, measured
whole (README, "Memory per machine").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backend.drivers.qemu.cmdline as cmdline
import backend.drivers.qemu.driver as qemu_driver
from backend.drivers.base import VmHandle
from backend.drivers.qemu.accel import resolve_accel
from backend.drivers.qemu.cmdline import QemuConfig, build_argv, find_qemu
from backend.drivers.qemu.driver import QemuDriver
from backend.drivers.qemu.host_memory import preexec_for
from backend.drivers.qemu.qmp_ops import execute
from backend.drivers.qemu.readiness import wait_for_ready
from backend.guest.image_builder import CURRENT_FILE, GuestImage, build_default_image
from backend.guest.machine_seed import (
    MACHINE_INITRD_FILE,
    create_machine_keys,
    write_machine_initrd,
)
from backend.pools.manager import PoolManager
from backend.pools.settings import choose_size
from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.ports import pick_free_port
from backend.supervision.supervisor import Supervisor
from backend.template_builds.from_source import build_from_source
from backend.template_builds.snapshot import RAM_FILE
from backend.templates.machine_from_template import spec_from_template

PER_VM_TARGET_MIB = 64
BOOT_SLOWDOWN_TARGET = 1.05


@dataclass
class Sample:
    pss_mib: float
    rss_mib: float


@dataclass
class Group:
    label: str
    samples: list[Sample]
    start_seconds: list[float]
    #: the first machine's PSS and RSS by mapping (`pss_by_mapping`)
    breakdown: dict[str, Sample] | None = None
    #: the first machine's translation buffer as QEMU counts it (`translation_fill`)
    jit: str = ""


def smaps_rollup(pid: int) -> Sample:
    """PSS and RSS of one process, as the kernel sums them over all its mappings."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0])  # kB
    return Sample(fields["Pss"] / 1024, fields["Rss"] / 1024)


def _mapping_kind(perms: str, path: str, size: int, memory_mib: int) -> str:
    if Path(path).name.startswith("vmlinux"):
        return "kernel file (shared by its guests)"
    if Path(path).name == MACHINE_INITRD_FILE:
        return "the machine's initrd file"
    if "qemu-system" in path:
        return "QEMU binary"
    if ".so" in path:
        return "libraries (shared)"
    if not path and perms.startswith("rwx"):
        return "TCG translation buffer"
    if Path(path).name == RAM_FILE or (not path and size >= (memory_mib - 8) << 20):
        return "guest RAM"  # anonymous, or a restore's copy-on-write view of its template's
    return "QEMU heap and the rest" if path in ("", "[heap]") else "other mappings"


def pss_by_mapping(pid: int, memory_mib: int) -> dict[str, Sample]:
    """One QEMU's PSS and RSS summed by what each mapping is (/proc/PID/smaps): where a
    guest's memory goes, not only how much."""
    found: dict[str, Sample] = {}
    kind = "other mappings"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if len(words) >= 5 and not words[0].endswith(":"):  # a mapping's header line
            low, high = (int(x, 16) for x in words[0].split("-"))
            kind = _mapping_kind(words[1], words[5] if len(words) > 5 else "", high - low,
                                 memory_mib)
            found.setdefault(kind, Sample(0.0, 0.0))
        elif words[0] == "Pss:":
            found[kind].pss_mib += int(words[1]) / 1024
        elif words[0] == "Rss:":
            found[kind].rss_mib += int(words[1]) / 1024
    return found


def private_image_copy(cache: Path, images: Path, current: GuestImage) -> None:
    """The state dir's images: `current` copied and made current (its kernel file then
    is this run's alone, so its PSS is not split with other users of the cache), the
    rest linked."""
    images.mkdir()
    for entry in cache.iterdir():
        if entry == current.kernel.parent:
            shutil.copytree(entry, images / entry.name)
        elif entry.name != CURRENT_FILE and not entry.name.startswith("."):
            (images / entry.name).symlink_to(entry)
    (images / CURRENT_FILE).write_text(json.dumps({"content_hash": current.content_hash}))


def build_images(cache: Path) -> tuple[GuestImage, GuestImage]:
    """Debian's kernel's image, then the default one (current: boxui's kernel if built)."""
    os.environ["BOXUI_GUEST_KERNEL"] = "debian"
    try:
        debian = asyncio.run(build_default_image(cache))
    finally:
        del os.environ["BOXUI_GUEST_KERNEL"]
    return debian, asyncio.run(build_default_image(cache))


@contextlib.contextmanager
def memory_options_off() -> Iterator[None]:
    """The driver launches QEMU as before the memory options: plain `-accel tcg`, THP,
    no free page reporting."""
    names = (cmdline, "accel_option"), (qemu_driver, "preexec_for"), (
        cmdline, "free_page_reporting")
    saved = [vars(module)[name] for module, name in names]
    vars(cmdline)["accel_option"] = lambda accel, kernel, memory_mib: accel
    vars(qemu_driver)["preexec_for"] = lambda accel: None
    vars(cmdline)["free_page_reporting"] = lambda config: False
    try:
        yield
    finally:
        for (module, name), value in zip(names, saved, strict=True):
            vars(module)[name] = value


async def translation_fill(driver: QemuDriver, handle: VmHandle) -> str:
    """What TCG's buffer holds and how often it was flushed, from QEMU's `info jit`
    (over the driver's own QMP connection; a second client would wait for it)."""
    if handle.accel != "tcg":
        return ""
    text = await execute(driver._qmp_of(handle), "human-monitor-command",
                         {"command-line": "info jit"})
    wanted = ("gen code size", "TB count", "TB flush count")
    return "; ".join(" ".join(line.split()) for line in str(text).splitlines()
                     if line.strip().startswith(wanted))


async def idle_group(sup: Supervisor, label: str, specs: list[MachineSpec],
                     idle: float) -> Group:
    """Start the machines one after another, let them all idle, sample, stop them."""
    times = []
    for spec in specs:
        await sup.engine.create_machine(spec)
        started = time.perf_counter()
        await sup.start_machine(spec.name)
        times.append(time.perf_counter() - started)
    await asyncio.sleep(idle)
    pids = [sup.handles[spec.name].pid for spec in specs]
    samples = [smaps_rollup(pid) for pid in pids]
    breakdown = pss_by_mapping(pids[0], specs[0].memory_mib)
    jit = await translation_fill(cast(QemuDriver, sup.driver), sup.handles[specs[0].name])
    for spec in specs:
        await sup.stop_machine(spec.name, force=True)
    return Group(label, samples, times, breakdown, jit)


async def pooled_group(sup: Supervisor, args: argparse.Namespace) -> Group:
    """--count members of a warm pool, each ready (restored, one SSH login), idle, then
    sampled; the pool is emptied after. Its times: from the pool's start to each ready."""
    (sup.engine.dirs.root / "daemon.toml").write_text(
        f"[pools]\nmemory_budget_mib = {args.count * args.memory}\n")
    choose_size(sup.engine.dirs, "bench:worker", args.count)
    manager, started = PoolManager(sup), time.perf_counter()
    times: list[float] = []
    await manager.start()
    async with asyncio.timeout(600 + 60 * args.count):
        while len(manager.members) < args.count:
            await manager.next_ready()  # told as each member becomes ready
            times.append(time.perf_counter() - started)
    await asyncio.sleep(args.idle)
    handles = [m.handle for m in manager.members.values()]
    samples = [smaps_rollup(handle.pid) for handle in handles]
    breakdown = pss_by_mapping(handles[0].pid, args.memory)
    jit = await translation_fill(cast(QemuDriver, sup.driver), handles[0])
    choose_size(sup.engine.dirs, "bench:worker", 0)
    await manager.reconcile()
    return Group("pooled (warm pool members)", samples, times, breakdown, jit)


async def measure_groups(args: argparse.Namespace, home: Path, image: GuestImage,
                         debian: GuestImage) -> list[Group]:
    groups = await default_groups(args, home / "default", image)
    if args.debian:
        groups += await debian_group(args, home / "debian", debian)
    return groups


async def debian_group(args: argparse.Namespace, home: Path, debian: GuestImage) -> list[Group]:
    """--count cold boots of the default guest on Debian's kernel, as before boxui's."""
    home.mkdir()
    engine = await Engine.open(home)
    private_image_copy(args.cache, engine.dirs.images, debian)
    sup = Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images),
                     boot_timeout=600)
    try:
        async with sup.running(recover=None):
            return [await idle_group(sup, "cold-booted, Debian's kernel", [
                MachineSpec(name=f"deb{i}", memory_mib=args.memory)
                for i in range(1, args.count + 1)], args.idle)]
    finally:
        await engine.close()


async def default_groups(args: argparse.Namespace, home: Path,
                         image: GuestImage) -> list[Group]:
    home.mkdir()
    engine = await Engine.open(home)
    private_image_copy(args.cache, engine.dirs.images, image)
    driver = QemuDriver()
    # a shared host under load can take minutes to boot ten TCG guests in a row
    sup = Supervisor(engine, driver, DefaultBootFiles(engine.dirs.images), boot_timeout=600)
    try:
        async with sup.running(recover=None):
            dirs = engine.dirs
            source = dirs.root / "bench.toml"
            source.write_text(f'template_id = "bench"\n[[variants]]\nrole = "worker"\n'
                              f"vcpus = 1\nmemory_mib = {args.memory}\n")
            await build_from_source(dirs, str(source), snapshot=True, driver=driver,
                                    accel=resolve_accel("auto"))
            n = range(1, args.count + 1)
            cold = await idle_group(sup, "cold-booted", [
                MachineSpec(name=f"cold{i}", memory_mib=args.memory) for i in n], args.idle)
            restored = await idle_group(sup, "restored from a template", [
                spec_from_template(dirs, f"clone{i}", "bench") for i in n], args.idle)
            pooled = await pooled_group(sup, args)
            if not args.before:
                return [cold, restored, pooled]
            with memory_options_off():
                before = await idle_group(sup, "cold-booted, before (--before)", [
                    MachineSpec(name=f"old{i}", memory_mib=args.memory) for i in n], args.idle)
            return [cold, restored, pooled, before]
    finally:
        await engine.close()


@dataclass
class Boot:
    seconds: float  # launch to the ready marker
    cpu_seconds: float  # QEMU's CPU (user + system) by then: what load on the host skews less


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bare_boot(image: GuestImage, work: Path, index: int, memory: int,
                    options: str) -> Boot:
    """A boot from launching QEMU to the guest's ready marker, with boxui's argv as it
    is now, or as it was before (`BOOT_VARIANTS`)."""
    accel = resolve_accel("auto")
    machine_dir = work / f"bare{index}"
    machine_dir.mkdir(mode=0o700)
    initrd = write_machine_initrd(image, machine_dir, create_machine_keys(machine_dir))
    config = QemuConfig(
        name=f"bare{index}", vcpus=1, memory_mib=memory, kernel=image.kernel, initrd=initrd,
        accel=accel.accel, ssh_port=pick_free_port(), console_log=machine_dir / "console.log",
        qmp_socket=machine_dir / "qmp.sock", pidfile=machine_dir / "qemu.pid",
        boot_id=secrets.token_hex(6), tsc_khz=accel.tsc_khz)
    argv = build_argv(config, find_qemu())
    preexec: Callable[[], None] | None = preexec_for(config.accel)
    if options == "before":
        argv, preexec = argv_with(argv, tb_size=None), None
    elif options == "previous":
        argv = argv_with(argv, tb_size=PREVIOUS_TB_SIZE_MIB, reporting=True)
    started = time.perf_counter()
    subprocess.run(argv, check=True, preexec_fn=preexec)  # returns once daemonized
    try:
        await wait_for_ready(config.console_log, config.boot_id, timeout=300)
        seconds = time.perf_counter() - started
        return Boot(seconds, cpu_seconds(int(config.pidfile.read_text())))
    finally:
        with contextlib.suppress(ProcessLookupError, OSError, ValueError):
            os.kill(int(config.pidfile.read_text()), signal.SIGKILL)


#: s24's translation buffer for boxui's kernel (MiB), the previous configuration's
PREVIOUS_TB_SIZE_MIB = 32
#: (label, Debian's kernel?, options); the first two are what "now" is compared with
BOOT_VARIANTS = (
    ("before the memory work: Debian's kernel, no memory options", True, "before"),
    (f"previous: boxui's kernel, tb-size {PREVIOUS_TB_SIZE_MIB}", False, "previous"),
    ("now: boxui's argv and kernel", False, "now"),
)


async def boot_times(args: argparse.Namespace, home: Path, image: GuestImage,
                     debian: GuestImage) -> list[list[Boot]]:
    times: list[list[Boot]] = [[] for _ in BOOT_VARIANTS]
    work = home / "bare"
    work.mkdir()
    index = 0
    for _ in range(args.boot_runs):  # alternating: load on the host hits all alike
        for runs, (_label, on_debian, options) in zip(times, BOOT_VARIANTS, strict=True):
            index += 1
            runs.append(await bare_boot(debian if on_debian else image, work, index,
                                        args.memory, options))
    return times


def argv_with(argv: list[str], tb_size: int | None, reporting: bool = False) -> list[str]:
    """boxui's argv with TCG's buffer at `tb_size` MiB (None: QEMU's default), with free
    page reporting only if `reporting`, as the earlier configurations launched QEMU."""
    at = argv.index("-accel") + 1
    accel = argv[at].split(",")[0]
    argv = [*argv[:at], accel if tb_size is None else f"{accel},tb-size={tb_size}",
            *argv[at + 1:]]
    return argv if reporting else [arg.replace(",free-page-reporting=on", "") for arg in argv]


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def report(args: argparse.Namespace, groups: list[Group], image: GuestImage,
           times: list[list[Boot]], load_at_start: str) -> None:
    load = f"{load_at_start} at the start, {load_average()} at the end"
    tb_size = cmdline.tb_size_mib(image.kernel, args.memory)
    print(f"memory of idle default guests ({args.memory} MiB, 1 vCPU, accel "
          f"{resolve_accel('auto').accel}, tb-size {tb_size}), idle "
          f"{args.idle:.0f} s; host load average {load}")
    print(f"guest kernel {image.kernel_version} ({image.kernel.stat().st_size / 2**20:.1f} "
          f"MiB file{', built in drivers' if image.builtin_drivers else ''})")
    print()
    print(f"{args.count} machines {'':<26}{'PSS/VM':>9}{'RSS/VM':>9}{'PSS max':>9}"
          f"{'PSS sum':>9}   target")
    for group in groups:
        pss = [s.pss_mib for s in group.samples]
        rss = [s.rss_mib for s in group.samples]
        total = sum(pss)
        ok = max(pss) <= PER_VM_TARGET_MIB and total <= PER_VM_TARGET_MIB * args.count
        print(f"{group.label:<37}{statistics.mean(pss):>8.0f}M{statistics.mean(rss):>8.0f}M"
              f"{max(pss):>8.0f}M{total:>8.0f}M   <= {PER_VM_TARGET_MIB} MiB each, "
              f"<= {PER_VM_TARGET_MIB * args.count} MiB sum: {verdict(ok)}")
    print()
    for group in groups:
        print(f"{group.label}, per machine (MiB PSS / RSS; start to ready s):")
        print("  " + "  ".join(f"{s.pss_mib:.0f}/{s.rss_mib:.0f}" for s in group.samples))
        print("  " + "  ".join(f"{t:.1f}" for t in group.start_seconds))
    print()
    print("where each group's first machine's PSS goes (MiB PSS / RSS, from its smaps):")
    for group in groups:
        if group.breakdown:
            print(f"  {group.label}:")
            for kind, sample in sorted(group.breakdown.items(), key=lambda kv: -kv[1].pss_mib):
                if sample.rss_mib >= 0.1:
                    print(f"    {kind:<40}{sample.pss_mib:>7.1f} / {sample.rss_mib:.1f}")
            if group.jit:
                print(f"    (info jit: {group.jit})")
    print()
    medians = [statistics.median(boot.seconds for boot in runs) for runs in times]
    cpu = [statistics.median(boot.cpu_seconds for boot in runs) for runs in times]
    print(f"cold boot to the ready marker, bare QEMU, {args.boot_runs} runs each (alternating):"
          " seconds, then QEMU's CPU seconds by then")
    for (label, _debian, _options), runs, median, cpu_median in zip(
            BOOT_VARIANTS, times, medians, cpu, strict=True):
        print(f"  {label}")
        print("    " + " ".join(f"{boot.seconds:.2f}" for boot in runs)
              + f"  median {median:.2f} s;  CPU " + " ".join(f"{b.cpu_seconds:.2f}" for b in runs)
              + f"  median {cpu_median:.2f} s")
    ratio = medians[-1] / medians[0]
    print(f"  now / before: {ratio:.3f} (CPU {cpu[-1] / cpu[0]:.3f})   target <= "
          f"{BOOT_SLOWDOWN_TARGET}: {verdict(ratio <= BOOT_SLOWDOWN_TARGET)}")
    print(f"  now / previous: {medians[-1] / medians[1]:.3f} (CPU {cpu[-1] / cpu[1]:.3f})   "
          "what the buffer cap costs the boot (no target: the target's boot is 'before')")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--boot-runs", type=int, default=3)
    parser.add_argument("--before", action="store_true",
                        help="also --count cold boots without the memory options")
    parser.add_argument("--debian", action="store_true",
                        help="also --count cold boots on Debian's kernel (boxui's before)")
    parser.add_argument("--tb-size", type=int, default=None,
                        help="run 'now' with TCG's translation buffer at this many MiB")
    parser.add_argument("--cache", type=Path, default=Path(
        os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache")))
    args = parser.parse_args()
    if args.tb_size is not None:
        vars(cmdline)["tb_size_mib"] = lambda kernel, memory_mib: args.tb_size  # at each launch
    load_at_start = load_average()
    debian, image = build_images(args.cache)  # built once, outside the figures
    home = Path(tempfile.mkdtemp(prefix="bxm-", dir="/tmp"))  # short: QMP socket paths
    try:
        groups = asyncio.run(measure_groups(args, home, image, debian))
        times = asyncio.run(boot_times(args, home, image, debian))
        report(args, groups, image, times, load_at_start)
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(home) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
