"""The kernel and initrd a machine boots from.

By default every machine boots boxui's own guest image (built once and cached by content
hash) plus a small per-machine archive with its SSH keys and a fresh RNG seed, rewritten
at every cold boot (a few MB of copying, no image work). A machine may instead name its
own kernel and initrd in `machine.toml`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.guest.debian_initrd import (
    DEBIAN_INITRD_FILE,
    DEBIAN_KERNEL_ARGS,
    DEBIAN_MOUNT_SCRIPT,
    image_modules,
    write_debian_initrd,
)
from backend.guest.errors import GuestImageError
from backend.guest.image_builder import GuestImage, build_default_image, load_current_image
from backend.guest.machine_seed import (
    MACHINE_INITRD_FILE,
    create_machine_keys,
    release_boot_initrd,
    write_machine_initrd,
)
from backend.guest.newc import Entry
from backend.guest.shared_folders import (
    SHARE_MODULES,
    default_guest_share_entries,
    kernel_share_modules,
    share_entries,
)
from backend.images.store import find_image_in
from backend.state.atomic_write import atomic_write_text
from backend.state.machine_spec import MachineSpec
from backend.supervision.machine_disk import ensure_disk, requested_size

ProgressFn = Callable[[str, str], None]
BOOT_RECORD = "boot.json"


class BootFilesError(BoxuiError):
    code = "boot_files"


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    append: str
    disk_image: Path | None = None
    #: the initrd was written for this boot alone (its RNG seed is single-use): the
    #: supervisor releases it once the guest is ready (`release_boot_initrd`)
    single_use: bool = False


class BootFilesProvider:
    """Interface: tests substitute a provider that returns files of their own."""

    async def prepare(
        self, spec: MachineSpec, machine_dir: Path, progress: ProgressFn | None = None
    ) -> BootFiles:
        raise NotImplementedError


def user_boot_files(spec: MachineSpec) -> BootFiles | None:
    """The machine's own kernel/initrd, checked to exist; None if it uses the default."""
    if spec.kernel is None:
        if spec.initrd is not None:
            raise BootFilesError(f"{spec.name}: initrd is set but kernel is not; set both")
        return None
    if not spec.kernel.is_file():
        raise BootFilesError(f"{spec.name}: kernel not found: {spec.kernel}")
    if spec.initrd is None:
        raise BootFilesError(f"{spec.name}: kernel is set but initrd is not; set both")
    if not spec.initrd.is_file():
        raise BootFilesError(f"{spec.name}: initrd not found: {spec.initrd}")
    if spec.disk_image is not None and not spec.disk_image.is_file():
        raise BootFilesError(f"{spec.name}: disk image not found: {spec.disk_image}")
    return BootFiles(spec.kernel, spec.initrd, spec.cmdline, spec.disk_image)


class DefaultBootFiles(BootFilesProvider):
    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self._lock = asyncio.Lock()

    async def _default_image(self, progress: ProgressFn | None) -> GuestImage:
        # the last built image, without asking apt (2-3 s); build only if none
        image = await asyncio.to_thread(load_current_image, self.images_dir)
        return image if image is not None else await build_default_image(self.images_dir,
                                                                          progress)

    async def _prepare_disk_machine(self, spec: MachineSpec, machine_dir: Path,
                                    progress: ProgressFn | None) -> BootFiles:
        """The default kernel, the machine's Debian initrd and its own disk (made at its
        first boot)."""
        assert spec.image is not None
        os_image = await asyncio.to_thread(find_image_in, self.images_dir, spec.image)
        async with self._lock:
            try:
                image = await self._default_image(progress)
                if image.os_kernel_version != os_image.kernel_version:
                    raise BootFilesError(
                        f"{spec.name}: image {spec.image} has modules for kernel "
                        f"{os_image.kernel_version}, the guest kernel is "
                        f"{image.os_kernel_version}; rebuild the image")
                keys = await asyncio.to_thread(create_machine_keys, machine_dir)
                modules = await asyncio.to_thread(image_modules, os_image.rootfs,
                                                  os_image.kernel_version)
                shares: list[Entry] = []
                if spec.mounts:  # the 9p modules come out of the image, as the disk's
                    found = await asyncio.to_thread(image_modules, os_image.rootfs,
                                                    os_image.kernel_version, SHARE_MODULES)
                    shares = share_entries(spec.mounts, found, DEBIAN_MOUNT_SCRIPT)
                initrd = await asyncio.to_thread(write_debian_initrd, image.os_initrd,
                                                 machine_dir, keys, modules, shares)
            except GuestImageError as exc:
                raise BootFilesError(str(exc)) from None
        size = requested_size(spec.disk, os_image.size_bytes)
        disk = await asyncio.to_thread(ensure_disk, machine_dir, os_image.rootfs, size)
        await _write_record(machine_dir, image, initrd, {
            "kernel": str(image.os_kernel), "kernel_version": image.os_kernel_version,
            "os_image": os_image.name, "os_image_hash": os_image.hash, "disk": str(disk)})
        append = " ".join(filter(None, [DEBIAN_KERNEL_ARGS, spec.cmdline]))
        return BootFiles(image.os_kernel, initrd, append, disk, single_use=True)

    async def _default_guest_shares(self, spec: MachineSpec,
                                    image: GuestImage) -> list[Entry]:
        if not spec.mounts:
            return []
        if image.builtin_drivers:  # boxui's kernel has 9p built in
            return default_guest_share_entries(spec.mounts, {})
        modules = await asyncio.to_thread(kernel_share_modules, self.images_dir,
                                          image.kernel_version)
        return default_guest_share_entries(spec.mounts, modules)

    async def prepare(
        self, spec: MachineSpec, machine_dir: Path, progress: ProgressFn | None = None
    ) -> BootFiles:
        own = user_boot_files(spec)
        if own is not None:
            return own
        if spec.image is not None:
            return await self._prepare_disk_machine(spec, machine_dir, progress)
        if spec.disk_image is not None:
            raise BootFilesError(
                f"{spec.name}: disk_image needs a kernel and initrd that mount it; "
                "set kernel and initrd too"
            )
        async with self._lock:  # one image build at a time, whatever starts at once
            try:
                image = await self._default_image(progress)
                keys = await asyncio.to_thread(create_machine_keys, machine_dir)
                shares = await self._default_guest_shares(spec, image)
                # rewritten on every cold boot: it carries a fresh RNG seed for the guest
                initrd = await asyncio.to_thread(write_machine_initrd, image, machine_dir,
                                                 keys, spec.env, shares)
            except GuestImageError as exc:
                raise BootFilesError(str(exc)) from None
        await _write_record(machine_dir, image, initrd)
        return BootFiles(image.kernel, initrd, spec.cmdline, single_use=True)


async def _write_record(machine_dir: Path, image: GuestImage, initrd: Path,
                        extra: dict[str, str] | None = None) -> None:
    record = {"kernel": str(image.kernel), "initrd": str(initrd),
              "image_hash": image.content_hash, "kernel_version": image.kernel_version,
              **(extra or {})}
    await asyncio.to_thread(atomic_write_text, machine_dir / BOOT_RECORD,
                            json.dumps(record, indent=2) + "\n")


def boot_record(machine_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((machine_dir / BOOT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def release_written_initrds(machine_dir: Path) -> None:
    """Release the initrds boxui writes for a boot (`BootFiles.single_use`) in
    `machine_dir`: for a boot this supervisor did not start (re-adopted while booting),
    which of them it used is not known, and any other is stale."""
    for name in (MACHINE_INITRD_FILE, DEBIAN_INITRD_FILE):
        release_boot_initrd(machine_dir / name)
