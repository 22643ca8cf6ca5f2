"""The kernel's modules for an image: from the kernel the default guest boots.

A Debian root filesystem has no modules of its own, and modules only load into the
kernel they were built with, so an image takes `/lib/modules/<version>` from the very
`linux-image-*` .deb whose kernel boxui boots (the default guest's cache keeps it).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from backend.guest.errors import GuestImageError
from backend.guest.image_builder import DEBS_DIR, build_default_image, load_current_image
from backend.guest.tools import require_tool, run
from backend.images.errors import ImageBuildError
from backend.images.progress import ImageProgress
from backend.state.state_dir import StateDir

ProgressFn = Callable[[ImageProgress], None]


@dataclass(frozen=True)
class KernelModules:
    """`tree` (the contents of lib/modules/<version>) or the .deb that holds it."""

    version: str
    deb: Path | None = None
    tree: Path | None = None


#: Drivers for hardware a microvm never has: ~60 % of the modules' 390 MB, left out of
#: every image (virtio, filesystems, netfilter, crypto and the rest stay).
NO_SUCH_HARDWARE: tuple[str, ...] = (
    "sound", "drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/net/ethernet",
    "drivers/infiniband", "drivers/staging", "drivers/bluetooth", "drivers/isdn",
    "drivers/iio", "drivers/usb", "drivers/hwmon", "drivers/mtd", "drivers/thunderbolt",
    "drivers/firewire", "drivers/input/touchscreen", "drivers/nfc", "net/bluetooth",
    "net/wireless", "net/mac80211", "net/nfc",
)

KernelSource = Callable[[StateDir, ProgressFn], Awaitable[KernelModules]]


async def default_kernel(dirs: StateDir, report: ProgressFn) -> KernelModules:
    """The kernel machines boot now (`load_current_image`, as boot_files does), built
    first if there is none yet."""
    return await kernel_from_cache(dirs.images, report)


async def kernel_from_cache(cache_root: Path, report: ProgressFn) -> KernelModules:
    """The current default guest's kernel in the guest image cache `cache_root`."""
    image = await asyncio.to_thread(load_current_image, cache_root)
    if image is None:
        report(ImageProgress(step="resolving", message="building the default guest first "
                             "(its kernel boots every image)"))
        try:
            image = await build_default_image(cache_root, lambda _phase, message: report(
                ImageProgress(step="resolving", message=f"default guest: {message}")))
        except GuestImageError as exc:
            raise ImageBuildError("resolving the kernel", str(exc)) from None
    version = image.os_kernel_version  # OS images boot Debian's kernel, not boxui's
    pattern = f"linux-image-{version}_*.deb"
    debs = sorted((cache_root / DEBS_DIR).glob(pattern))
    if not debs:
        raise ImageBuildError("resolving the kernel", f"no {pattern} in "
                              f"{cache_root / DEBS_DIR}: rebuild the default guest "
                              "(`boxui image build default`)",
                              package=f"linux-image-{version}")
    return KernelModules(version=version, deb=debs[-1])


def prune_modules(tree: Path) -> None:
    for part in NO_SUCH_HARDWARE:
        shutil.rmtree(tree / "kernel" / part, ignore_errors=True)


async def modules_tree(kernel: KernelModules, work: Path) -> Path:
    """A directory holding the modules of `kernel` (extracted from its .deb if need be)."""
    if kernel.tree is not None:
        return kernel.tree
    assert kernel.deb is not None
    dpkg_deb = require_tool("dpkg-deb")
    out = work / "kernel-deb"
    await asyncio.to_thread(out.mkdir)
    try:
        await run([dpkg_deb, "-x", str(kernel.deb), str(out)], what=f"unpacking {kernel.deb}")
    except GuestImageError as exc:
        raise ImageBuildError("unpacking the kernel's modules", str(exc),
                              package=kernel.deb.name.split("_")[0]) from None
    for lib in ("lib", "usr/lib"):
        tree = out / lib / "modules" / kernel.version
        if tree.is_dir():
            return tree
    await asyncio.to_thread(shutil.rmtree, out, True)
    raise ImageBuildError("unpacking the kernel's modules",
                          f"{kernel.deb.name} has no lib/modules/{kernel.version}")
