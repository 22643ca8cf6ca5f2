"""A disk machine's own disk: a qcow2 overlay in its directory on a shared, read-only base.

Why an overlay: the image's `rootfs.ext4` is shared by every machine made from it, so
each machine writes only its own `disk.qcow2` (`-b BASE -F raw`); QEMU opens the backing
file read-only through the chain, so the base is never written. The overlay is made
under a temporary name and renamed into place, so a crash mid-create leaves no
half-made disk that a later boot would trust.

Sizes come from the qcow2 header (virtual size, 8 bytes at offset 24) and `st_blocks`
(allocated), so showing a disk costs one small read and a stat, never a subprocess.
Growing is `qemu-img resize` on a stopped machine; the guest grows its filesystem to
the disk at its next boot (the Debian initramfs). Shrinking would cut the filesystem
under the guest's feet, so it is refused.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.guest.tools import require_tool
from backend.images.store import find_image_in
from backend.state.disk_size import format_size, parse_size
from backend.state.machine_spec import MachineSpec

DISK_FILE = "disk.qcow2"
QEMU_IMG = "qemu-img"
_QCOW2_MAGIC = b"QFI\xfb"
_TIMEOUT_S = 120


class DiskError(BoxuiError):
    code = "disk"


class DiskSizeError(DiskError):
    """A size the user asked for that cannot be: refused before anything changes."""

    code = "invalid_disk"


@dataclass(frozen=True)
class DiskUsage:
    path: Path
    virtual_bytes: int
    allocated_bytes: int

    def as_json(self) -> dict[str, object]:
        return {"path": str(self.path), "virtual_bytes": self.virtual_bytes,
                "allocated_bytes": self.allocated_bytes}


def disk_path(machine_dir: Path) -> Path:
    return machine_dir / DISK_FILE


def requested_size(disk: str | None, image_bytes: int) -> int:
    """The disk's size in bytes: as asked, or the image's own size when not asked;
    smaller than the image is refused (the root filesystem would not fit)."""
    if disk is None:
        return -(-image_bytes // (1 << 20)) * (1 << 20)
    try:
        size = parse_size(disk)
    except ValueError as exc:
        raise DiskSizeError(f"disk: {exc}") from None
    if size < image_bytes:
        raise DiskSizeError(f"disk: {disk} is smaller than the image ({format_size(image_bytes)}); "
                        f"ask for at least {format_size(image_bytes)}")
    return size


def check_disk_request(images_dir: Path, spec: MachineSpec) -> int:
    """The size `spec` asks for, checked against its image (which must exist)."""
    assert spec.image is not None
    return requested_size(spec.disk, find_image_in(images_dir, spec.image).size_bytes)


def _qemu_img(args: list[str], what: str) -> str:
    argv = [require_tool(QEMU_IMG), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise DiskError(f"{what}: qemu-img did not finish in {_TIMEOUT_S} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DiskError(f"{what}: {detail}")
    return done.stdout


def ensure_disk(machine_dir: Path, base: Path, size: int | None,
                base_format: str = "raw") -> Path:
    """The machine's disk, made now if it has none (temp name, then rename). A template
    clone's base is the template's frozen qcow2 disk, and its size (None) is that disk's."""
    target = disk_path(machine_dir)
    if target.exists():
        return target
    temp = machine_dir / f".{DISK_FILE}.{os.getpid()}.tmp"
    try:
        _qemu_img(["create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F",
                   base_format, str(temp), *([] if size is None else [str(size)])],
                  f"creating the disk of {machine_dir.name}")
        os.chmod(temp, 0o600)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(temp, target)
        fd = os.open(machine_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return target


def disk_usage(machine_dir: Path) -> DiskUsage | None:
    """Virtual and allocated size of the machine's disk; None if it has none yet."""
    path = disk_path(machine_dir)
    try:
        with path.open("rb") as handle:
            header = handle.read(32)
            allocated = os.fstat(handle.fileno()).st_blocks * 512
    except FileNotFoundError:
        return None
    if len(header) < 32 or header[:4] != _QCOW2_MAGIC:
        raise DiskError(f"{path} is not a qcow2 disk")
    (virtual,) = struct.unpack(">Q", header[24:32])
    return DiskUsage(path, virtual, allocated)


def grow_disk(machine_dir: Path, new_size: int) -> DiskUsage | None:
    """Grow a stopped machine's disk to `new_size`; shrinking is refused. A machine
    that has not booted yet has no disk: its spec alone says the size."""
    usage = disk_usage(machine_dir)
    if usage is None:
        return None
    if new_size < usage.virtual_bytes:
        raise DiskSizeError(f"disk: cannot shrink {machine_dir.name}'s disk from "
                        f"{format_size(usage.virtual_bytes)} to {format_size(new_size)}; "
                        "only growing is supported")
    if new_size > usage.virtual_bytes:
        _qemu_img(["resize", "-q", "-f", "qcow2", str(usage.path), str(new_size)],
                  f"resizing the disk of {machine_dir.name}")
    return disk_usage(machine_dir)
