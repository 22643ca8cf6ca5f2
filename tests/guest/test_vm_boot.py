"""A real boot: build the image, seed a machine, start QEMU, SSH in, QMP, power off.

The first run downloads ~75 MB of .debs and builds the image (~20-60 s); later runs
reuse the cache in $BOXUI_GUEST_CACHE (default /tmp/boxui-guest-cache, shared with
bench/boot_bare.py) and take about 10-15 s under TCG.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path

import asyncssh
import pytest
from qemu.qmp import QMPClient

from backend.drivers.qemu.accel import resolve_accel
from backend.drivers.qemu.cmdline import QemuConfig, build_argv, find_qemu
from backend.drivers.qemu.qmp_ops import enable_balloon_stats, read_balloon_stats, request_powerdown
from backend.drivers.qemu.readiness import wait_for_ready
from backend.guest.image_builder import build_default_image
from backend.guest.machine_seed import (
    client_private_key,
    create_machine_keys,
    known_hosts_line,
    release_boot_initrd,
    write_machine_initrd,
)
from tests.guest.test_machine_seed import resident_kib

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("apt-get") is None,
        reason="needs qemu-system-x86 and apt (Debian host)",
    ),
]

CACHE = Path(os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache"))


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


async def test_cold_boot_ssh_qmp_and_graceful_powerdown(tmp_path: Path) -> None:
    image = await build_default_image(CACHE)
    machine_dir = tmp_path / "vmtest"
    keys = create_machine_keys(machine_dir)
    initrd = write_machine_initrd(image, machine_dir, keys)
    accel = resolve_accel("auto")
    port, boot_id = free_port(), secrets.token_hex(8)
    config = QemuConfig(
        name="vmtest", vcpus=1, memory_mib=256, kernel=image.kernel, initrd=initrd,
        accel=accel.accel, ssh_port=port, console_log=machine_dir / "console.log",
        qmp_socket=machine_dir / "qmp.sock", pidfile=machine_dir / "qemu.pid",
        boot_id=boot_id, tsc_khz=accel.tsc_khz,
    )  # fmt: skip
    launcher = await asyncio.create_subprocess_exec(*build_argv(config, find_qemu()))
    assert await asyncio.wait_for(launcher.wait(), 60) == 0  # it daemonizes QEMU
    pid = int(config.pidfile.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"boxui-vmtest,process=boxui-vmtest" in cmdline

        await wait_for_ready(config.console_log, boot_id, 180, lambda: alive(pid))
        # as the supervisor does once a cold boot is ready: the guest runs on without it
        release_boot_initrd(initrd)
        assert "initrd.img" in Path(f"/proc/{pid}/maps").read_text()
        assert resident_kib("/initrd.img", pid) == 0

        known = asyncssh.import_known_hosts(known_hosts_line(keys, port))
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = await asyncssh.connect(
                    "127.0.0.1", port, username="root", known_hosts=known,
                    client_keys=[client_private_key(keys)], connect_timeout=10,
                )  # fmt: skip
                break
            except (OSError, asyncssh.Error):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        async with conn:
            uname = await conn.run("uname -r", check=True)
            assert str(uname.stdout).strip() == image.kernel_version
            probe = await conn.run(
                "hostname; stat -c %a /root/.ssh /root/.ssh/authorized_keys;"
                " test -e /etc/boxui/random-seed && echo seed-left || echo seed-used",
                check=True,
            )
            assert str(probe.stdout).split() == ["vmtest", "700", "600", "seed-used"]

        qmp = QMPClient("boxui-test")
        await qmp.connect(str(config.qmp_socket))
        try:
            status = await qmp.execute("query-status")
            assert isinstance(status, dict) and status["status"] == "running"
            await enable_balloon_stats(qmp, 1)
            stats: dict[str, object] = {}
            for _ in range(50):
                stats = await read_balloon_stats(qmp)
                if stats.get("last-update"):
                    break
                await asyncio.sleep(0.2)
            assert isinstance(stats["stats"], dict)
            assert stats["stats"]["stat-total-memory"] > 100 * 2**20
            await request_powerdown(qmp)
        finally:
            with contextlib.suppress(Exception):
                await qmp.disconnect()

        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not alive(pid), "QEMU did not exit after system_powerdown"
        assert f"BOXUI-SHUTDOWN {boot_id}" in config.console_log.read_text(errors="replace")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
