"""The Debian guest's per-machine initramfs: the same host key for sshd, the modules read
out of the image without mounting it, and the order /init loads them in."""

from __future__ import annotations

import gzip
import lzma
import shutil
import stat
import subprocess
from pathlib import Path

import asyncssh
import pytest

from backend.guest.debian_initrd import (
    _FITS,
    BOOT_TARGET,
    DEBIAN_KERNEL_ARGS,
    DISK_MODULES,
    LOAD_ORDER,
    debian_seed_archive,
    image_modules,
    openssh_host_key,
    write_debian_initrd,
)
from backend.guest.errors import GuestImageError
from backend.guest.machine_seed import create_machine_keys, host_public_key
from backend.guest.newc import Entry, read_archive, write_archive

VERSION = "6.1.0-test"
needs_e2fsprogs = pytest.mark.skipif(
    shutil.which("debugfs") is None or shutil.which("mkfs.ext4") is None,
    reason="e2fsprogs (debugfs, mkfs.ext4) is not installed")


def test_sshd_gets_the_machine_host_key(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m")
    key = asyncssh.import_private_key(openssh_host_key(keys))
    line = key.export_public_key("openssh").decode().split()[:2]
    assert line == host_public_key(keys).split()[:2]  # known_hosts stays valid


def test_load_order_puts_the_disk_before_the_rest() -> None:
    assert LOAD_ORDER[:3] == ["virtio_ring", "virtio", "virtio_mmio"]
    assert LOAD_ORDER[3:9] == ["virtio_blk", "crc16", "mbcache", "jbd2", "crc32c_generic",
                               "ext4"]
    assert "virtio_net" in LOAD_ORDER[9:] and "evdev" in LOAD_ORDER[9:]


def test_seed_archive_carries_init_modules_and_private_keys(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m")
    entries = {e.name: e for e in read_archive(debian_seed_archive(keys, {"ext4": b"ko"}))}
    init = entries["init"].data.decode()
    assert "insmod /lib/boxui-modules/$m.ko" in init and "switch_root" in init
    assert "resize2fs /dev/vda" in init
    assert entries["lib/boxui-modules/ext4.ko"].data == b"ko"
    for secret in ("boxui/ssh_host_ed25519_key", "boxui/authorized_keys", "boxui/random-seed"):
        assert stat.S_IMODE(entries[secret].mode) == 0o600
    assert stat.S_IMODE(entries["boxui"].mode) == 0o700
    assert entries["boxui/authorized_keys"].data == keys.client_public.read_bytes()
    # each connection a fork of the listener, not a re-exec (slow under TCG, see module)
    early = entries["boxui/ssh-early.conf"].data.decode()
    assert "ExecStart=\nExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS\n" in early
    # systemd boots to a target of sshd and the ready unit alone; nothing of theirs waits
    # for journald (its socket would pull it and udevd into the first transaction)
    assert f"systemd.unit={BOOT_TARGET}" in DEBIAN_KERNEL_ARGS.split()
    target = entries[f"boxui/{BOOT_TARGET}"].data.decode()
    assert "Wants=ssh.service boxui-ready.service" in target
    assert f"/boxui/{BOOT_TARGET}" in init  # copied to the new root
    ready_unit = entries["boxui/boxui-ready.service"].data.decode()
    for unit in (early, ready_unit):
        assert "StandardOutput=null" in unit and "StandardError=tty" in unit


def _default_initrd(path: Path, busybox: bytes) -> None:
    """A gzip'd default initrd: busybox (any ELF), libc (the host's, a real ELF), dropbear
    and a library only dropbear needs, a module."""
    regular, directory, link = stat.S_IFREG | 0o755, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").read_bytes()
    path.write_bytes(gzip.compress(write_archive([
        Entry("init", regular, b"#!/bin/sh\n"), Entry("bin", directory),
        Entry("bin/busybox", regular, busybox), Entry("lib", directory),
        Entry("lib/x86_64-linux-gnu", directory),
        Entry("lib/x86_64-linux-gnu/libc.so.6", regular, libc),
        Entry("lib/x86_64-linux-gnu/libgmp.so.10", regular, b"only dropbear's"),
        Entry("lib64", directory),
        Entry("lib64/ld-linux-x86-64.so.2", link, b"/lib/x86_64-linux-gnu/ld.so"),
        Entry("lib/boxui-modules", directory),
        Entry("lib/boxui-modules/virtio.ko", regular, b"ko"),
        Entry("usr", directory), Entry("usr/sbin", directory),
        Entry("usr/sbin/dropbear", regular, b"ELF"), Entry("etc", directory),
        Entry("etc/dropbear", directory)])))


def test_initrd_is_the_plain_base_without_dropbear_then_the_seed(tmp_path: Path) -> None:
    """Uncompressed (the guest's gunzip under TCG cost 1.6 s), busybox and its libraries
    and the modules kept, dropbear and what only it needs left out."""
    keys = create_machine_keys(tmp_path / "m")
    base = tmp_path / "initrd.img"
    _default_initrd(base, Path("/bin/true").read_bytes())  # NEEDED: libc.so.6
    target = write_debian_initrd(base, tmp_path / "m", keys, {})
    blob = target.read_bytes()
    assert blob.startswith(b"070701") and stat.S_IMODE(target.stat().st_mode) == 0o600
    names = [e.name for e in read_archive(blob)]
    assert {"bin/busybox", "lib/x86_64-linux-gnu/libc.so.6", "lib64/ld-linux-x86-64.so.2",
            "lib/boxui-modules/virtio.ko"} <= set(names)
    assert not {"usr/sbin/dropbear", "etc/dropbear",
                "lib/x86_64-linux-gnu/libgmp.so.10"} & set(names)
    seed = blob[(len(write_archive([])) + blob.index(b"TRAILER!!!") + 511) // 512 * 512:]
    assert read_archive(seed)[0].name == "init"


def test_a_base_initrd_that_is_not_one_is_refused(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m")
    base = tmp_path / "initrd.img"
    base.write_bytes(b"\x1f\x8b" + b"b" * 1000)
    with pytest.raises(GuestImageError, match="cannot be read"):
        write_debian_initrd(base, tmp_path / "m", keys, {})
    _default_initrd(base, b"not an ELF")
    with pytest.raises(GuestImageError, match="not a 64-bit"):
        write_debian_initrd(base, tmp_path / "m", keys, {})


def _ext4_with_modules(tmp_path: Path, skip: str | None = None) -> Path:
    tree = tmp_path / "tree"
    for name, relative in DISK_MODULES:
        if name == skip:
            continue
        path = tree / "usr/lib/modules" / VERSION / "kernel" / f"{relative}.xz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(f"module {name}".encode()))
    (tree / "lib").symlink_to("usr/lib")
    image = tmp_path / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "8M"], check=True)
    return image


@needs_e2fsprogs
def test_modules_are_read_out_of_the_image_unmounted(tmp_path: Path) -> None:
    found = image_modules(_ext4_with_modules(tmp_path), VERSION)
    assert found == {name: f"module {name}".encode() for name, _ in DISK_MODULES}


@needs_e2fsprogs
def test_a_missing_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match=r"kernel module jbd2 for 6\.1\.0-test"):
        image_modules(_ext4_with_modules(tmp_path, skip="jbd2"), VERSION)


_TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue\n"


def _run_ready_script(tmp_path: Path, tcp: str, tcp6: str = "") -> str:
    """The ready script with its paths moved under tmp_path, run by the host's sh:
    what it wrote to the console, or "" when it gave up."""
    from backend.guest.debian_initrd import _READY

    (tmp_path / "tcp").write_text(_TCP_HEADER + tcp)
    (tmp_path / "tcp6").write_text(_TCP_HEADER + tcp6)
    (tmp_path / "boot-id").write_text("b00t\n")
    script = (_READY.replace("/proc/net/tcp6", str(tmp_path / "tcp6"))
              .replace("/proc/net/tcp ", f"{tmp_path / 'tcp'} ")
              .replace("/etc/boxui/boot-id", str(tmp_path / "boot-id"))
              .replace("/dev/console", str(tmp_path / "console"))
              .replace('-gt 3000', '-gt 2')
              .replace("exec systemctl start --no-block default.target",
                       f"echo default.target >> {tmp_path / 'console'}"))
    subprocess.run(["sh", "-c", script], timeout=30, check=False)
    console = tmp_path / "console"
    return console.read_text() if console.exists() else ""


def test_ready_marker_waits_for_sshd_listening_on_22(tmp_path: Path) -> None:
    listening = "   0: 00000000:0016 00000000:0000 0A 00000000:00000000\n"
    # then the rest of the boot, which systemd held back until SSH answers
    assert _run_ready_script(tmp_path, listening) == "BOXUI-READY b00t\ndefault.target\n"
    (tmp_path / "console").unlink()
    v6 = "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A\n"
    assert _run_ready_script(tmp_path, "", v6) == "BOXUI-READY b00t\ndefault.target\n"


@pytest.mark.parametrize("line", [
    "   0: 00000000:0017 00000000:0000 0A 00000000:00000000\n",  # another port
    "   0: 0F02000A:0016 0202000A:C350 01 00000000:00000000\n",  # connected, not listening
    "   0: 0F02000A:9C40 0202000A:0016 0A 00000000:00000000\n",  # 22 as the remote port
])
def test_no_marker_without_a_listening_sshd(tmp_path: Path, line: str) -> None:
    assert "BOXUI-READY" not in _run_ready_script(tmp_path, line)
    assert "default.target" not in _run_ready_script(tmp_path, line)


@needs_e2fsprogs
@pytest.mark.parametrize(("disk_mib", "skipped"), [(8, True), (16, False)])
def test_a_filesystem_that_fills_its_disk_is_not_grown(tmp_path: Path, disk_mib: int,
                                                       skipped: bool) -> None:
    """/init's superblock check, run by the host's sh on a real ext4 image: a disk the
    size of the filesystem is recorded as grown (no resize2fs), a larger one is not."""
    image = tmp_path / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "8M"], check=True)
    root = tmp_path / "root"
    (root / "etc/boxui").mkdir(parents=True)
    script = _FITS.replace("/dev/vda", str(image))
    subprocess.run(["sh", "-c", script], check=False, timeout=30,  # /init goes on
                   env={"R": str(root), "sectors": str(disk_mib * 2048), "PATH": "/usr/bin:/bin"})
    grown = root / "etc/boxui/grown-sectors"
    assert grown.is_file() is skipped
    if skipped:
        assert grown.read_text() == f"{disk_mib * 2048}\n"
