"""Cold-boot one bare microVM end to end and print where the time goes.

Builds (or reuses) the default guest image, seeds a throw-away machine, launches QEMU
with boxui's argv, waits for the readiness marker, runs `uname -r` over SSH with the
machine's own keys, reads balloon stats over QMP, then powers the guest off through the
ACPI power button and checks QEMU exits by itself.

    python bench/boot_bare.py [--cache DIR] [--accel auto|kvm|tcg] [--memory MIB]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import asyncssh
from qemu.qmp import QMPClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.drivers.qemu.cmdline import QemuConfig, build_argv, find_qemu
from backend.drivers.qemu.host_memory import preexec_for
from backend.drivers.qemu.qmp_ops import (
    enable_balloon_stats,
    read_balloon_stats,
    request_powerdown,
)
from backend.drivers.qemu.readiness import wait_for_ready
from backend.guest.image_builder import GuestImage, build_default_image
from backend.guest.machine_seed import (
    client_private_key,
    create_machine_keys,
    known_hosts_line,
    load_machine_keys,
    write_machine_initrd,
)
from backend.state.accelerator import AccelRequest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def ssh_run(port: int, keys_dir: Path, command: str, deadline: float) -> str:
    keys = load_machine_keys(keys_dir)
    known = asyncssh.import_known_hosts(known_hosts_line(keys, port))
    while True:
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port,
                username="root",
                client_keys=[client_private_key(keys)],
                known_hosts=known,
                connect_timeout=5,
            ) as conn:
                result = await conn.run(command, check=True)
                return str(result.stdout).strip()
        except (OSError, asyncssh.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(cache: Path, accel_request: AccelRequest, memory: int, keep: bool) -> int:
    t = time.monotonic()
    image = await build_default_image(cache, lambda phase, msg: print(f"  [{phase}] {msg}"))
    print(
        f"image: {image.content_hash[:12]} cache_hit={image.cache_hit} "
        f"kernel={image.kernel_version} in {time.monotonic() - t:.1f} s"
    )
    accel = resolve_accel(accel_request)
    print(f"accel: {accel.accel} ({accel.reason})")

    workdir: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="boxui-bench-"))
        if keep
        else tempfile.TemporaryDirectory(prefix="boxui-bench-")
    )
    with workdir as tmp:
        print(f"machine dir: {tmp}/bench")
        config = _machine(image, accel, memory, Path(tmp) / "bench")
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*build_argv(config, find_qemu()),
                                                    preexec_fn=preexec_for(config.accel))
        if await proc.wait() != 0:
            print("qemu failed to start")
            return 1
        pid = int(config.pidfile.read_text())
        print(f"qemu daemonized (pid {pid}) at {time.monotonic() - t0:.2f} s")
        try:
            await _boot_and_probe(config, pid, t0)
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    return 0


def _machine(image: GuestImage, accel: AccelChoice, memory: int, machine_dir: Path
             ) -> QemuConfig:
    """Keys, the machine's initrd and its QEMU config, as boxui would make them."""
    t = time.monotonic()
    keys = create_machine_keys(machine_dir)
    initrd = write_machine_initrd(image, machine_dir, keys)
    print(f"machine seed: keys + initrd in {time.monotonic() - t:.2f} s")
    return QemuConfig(
        name="bench", vcpus=1, memory_mib=memory, kernel=image.kernel, initrd=initrd,
        accel=accel.accel, ssh_port=free_port(), console_log=machine_dir / "console.log",
        qmp_socket=machine_dir / "qmp.sock", pidfile=machine_dir / "qemu.pid",
        boot_id=secrets.token_hex(8), tsc_khz=accel.tsc_khz,
    )  # fmt: skip


async def _boot_and_probe(config: QemuConfig, pid: int, t0: float) -> None:
    """Wait for ready, then time SSH, QMP and a graceful power-off from launch (t0)."""
    await wait_for_ready(config.console_log, config.boot_id, 120, lambda: alive(pid))
    print(f"marker seen at {time.monotonic() - t0:.2f} s")
    machine_dir = config.console_log.parent
    uname = await ssh_run(config.ssh_port, machine_dir, "uname -r", time.monotonic() + 30)
    print(f"ssh `uname -r` -> {uname!r} answered at {time.monotonic() - t0:.2f} s")

    qmp = QMPClient("boxui-bench")
    await qmp.connect(str(config.qmp_socket))
    print(f"qmp query-status: {await qmp.execute('query-status')}")
    await enable_balloon_stats(qmp, 1)
    stats: dict[str, object] = {}
    for _ in range(50):
        stats = await read_balloon_stats(qmp)
        if stats.get("last-update"):
            break
        await asyncio.sleep(0.2)
    print(f"balloon guest-stats: {stats}")
    await _power_down(qmp, pid)
    tail = config.console_log.read_text(errors="replace").strip().splitlines()[-6:]
    print("console tail:\n    " + "\n    ".join(tail))


async def _power_down(qmp: QMPClient, pid: int) -> None:
    t = time.monotonic()
    await request_powerdown(qmp)
    with contextlib.suppress(Exception):
        await qmp.disconnect()
    while alive(pid) and time.monotonic() - t < 60:
        await asyncio.sleep(0.05)
    if alive(pid):
        print("graceful shutdown: QEMU still running after 60 s")
    else:
        print(f"graceful shutdown: QEMU exited {time.monotonic() - t:.2f} s after "
              "system_powerdown")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/boxui-guest-cache"))
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the machine dir and logs")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.cache, args.accel, args.memory, args.keep)))
