"""Building the default guest image (kernel + initramfs) from Debian packages.

Why build from .debs at all: nothing but Debian's and PyPI's registries is reachable,
so the guest is assembled on the host from `linux-image-*-amd64`, `busybox-static` and
`dropbear-bin` plus the few libraries dropbear links against. One image is shared by
every machine; per-machine keys are appended later (see `machine_seed`).

Cache: `cache_root/<sha256>/` holds `vmlinuz` (Debian's bzImage), `vmlinux` (the same
kernel uncompressed, booted directly by microvm: ~5 s faster under TCG, see
`kernel_image`), `initrd.img` and `manifest.json`; when boxui's own kernel has been
built (`small_kernel`, by bin/setup) also `vmlinux-boxui` and `initrd-boxui.img` (the
same initramfs without Debian's modules), which default guests then boot, while
machines booting an OS image keep Debian's kernel and `initrd.img`. The key covers the
exact .deb contents, the text of every generated guest file, `BUILDER_VERSION` and
boxui's kernel (its hash), so a new kernel in the archive, a rebuilt own kernel, an
edited init script or a changed builder each give a new image, and nothing else does.
Downloaded .debs are kept in `cache_root/debs/` under apt's own file names, so a
rebuild only fetches what changed. A build happens in
`cache_root/.build-*` and is renamed into place whole, so an interrupted build never
leaves a half image; leftovers are removed by the next build (under the build lock).
Old image directories are not deleted: a running or snapshotted machine may still
boot from them.

Graceful shutdown on `-M microvm` (QEMU 7.2), as found by booting it: microvm's ACPI is
on by default (`acpi=auto`) and is hardware-reduced: QMP `system_powerdown` raises a
power-button event through the ACPI "generic event device". The Debian kernel turns it
into a KEY_POWER input event once the `button` and `evdev` modules are loaded; busybox
`acpid` runs `/etc/acpi/PWRF/00000080` (`poweroff`), busybox init stops services,
syncs, and the kernel powers off through the ACPI sleep register, at which point QEMU
exits by itself (measured: ~4 s, mostly busybox init's fixed waits between SIGTERM and
SIGKILL). `poweroff` typed over SSH takes the same path. `acpi=off` is no alternative
with Debian's kernel: QEMU then announces the virtio-mmio devices on the kernel command
line, which this kernel ignores (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), so the guest
has no eth0 at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from backend.guest import apt
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import BUILTIN_INIT, GUEST_MODULE_DIR, guest_text_fingerprint
from backend.guest.initramfs import assemble_tree, pack_tree
from backend.guest.kernel_image import extract_vmlinux
from backend.guest.small_kernel import SmallKernel, find_small_kernel
from backend.guest.tools import require_tool, run
from backend.state.atomic_write import atomic_write_bytes, fsync_dir, fsync_tree

__all__ = [
    "BUILDER_VERSION",
    "GuestImage",
    "GuestImageError",
    "ImageManifest",
    "ProgressFn",
    "build_default_image",
    "compute_content_hash",
    "load_cached_image",
    "load_current_image",
]

#: Bump whenever the way the image is assembled changes (not its inputs).
BUILDER_VERSION = "boxui-guest-builder/2"

ProgressFn = Callable[[str, str], None]

KERNEL_FILE = "vmlinuz"  # Debian's bzImage, as shipped
PVH_KERNEL_FILE = "vmlinux"  # its uncompressed ELF, booted when present (kernel_image.py)
INITRD_FILE = "initrd.img"
GUEST_KERNEL_FILE = "vmlinux-boxui"  # boxui's own kernel (small_kernel.py), when built
GUEST_INITRD_FILE = "initrd-boxui.img"  # the same initramfs without modules, for it
MANIFEST_FILE = "manifest.json"
DEBS_DIR = "debs"
BUILD_PREFIX = ".build-"
LOCK_FILE = ".lock"
CURRENT_FILE = "current.json"  # names the newest image, for start-up without apt


class GuestImage(BaseModel):
    """A ready-to-boot base image; paths point into the cache."""

    model_config = ConfigDict(frozen=True)

    kernel: Path
    initrd: Path
    content_hash: str
    cache_hit: bool
    kernel_version: str
    #: with boxui's kernel (kernel/initrd above): Debian's kernel, its version and the
    #: initrd with its modules, which machines booting an OS image from a disk keep
    #: using (their modules come out of the image). None: kernel/initrd are Debian's.
    debian_kernel: Path | None = None
    debian_initrd: Path | None = None
    debian_kernel_version: str | None = None

    @property
    def builtin_drivers(self) -> bool:
        """The default guest's kernel has every driver built in: no modules to load."""
        return self.debian_kernel is not None

    @property
    def os_kernel(self) -> Path:
        return self.debian_kernel or self.kernel

    @property
    def os_initrd(self) -> Path:
        return self.debian_initrd or self.initrd

    @property
    def os_kernel_version(self) -> str:
        return self.debian_kernel_version or self.kernel_version


class ImageManifest(BaseModel):
    """What is written next to an image, so a cache entry explains itself."""

    content_hash: str
    builder_version: str
    kernel_version: str
    kernel_file: str
    packages: dict[str, str]
    created_at: float
    #: boxui's own kernel, what default guests boot when set (small_kernel.py)
    guest_kernel_file: str | None = None
    guest_initrd_file: str | None = None
    guest_kernel_version: str | None = None


def compute_content_hash(
    deb_paths: Iterable[Path], guest_text: str, builder_version: str = BUILDER_VERSION
) -> str:
    """SHA-256 over the .debs (by file name order), the guest text and the builder version.

    Each .deb contributes its name, size and own SHA-256 (length-prefixed), which is as
    strong as hashing the raw bytes back to back but cannot be fooled by moving bytes
    from the end of one file to the start of the next.
    """
    outer = hashlib.sha256()
    outer.update(f"{builder_version}\0".encode())
    for path in sorted(deb_paths, key=lambda p: p.name):
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                inner.update(chunk)
        outer.update(f"deb\0{path.name}\0{path.stat().st_size}\0{inner.hexdigest()}\0".encode())
    text = guest_text.encode()
    outer.update(b"guest\0%d\0" % len(text) + text)
    return outer.hexdigest()


def load_cached_image(cache_root: Path, content_hash: str) -> GuestImage | None:
    """Return the cached image for `content_hash` if it is complete, else None."""
    directory = cache_root / content_hash
    try:
        manifest = ImageManifest.model_validate_json((directory / MANIFEST_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
    kernel, initrd = directory / manifest.kernel_file, directory / INITRD_FILE
    if manifest.content_hash != content_hash or not kernel.is_file() or not initrd.is_file():
        return None
    debian = GuestImage(kernel=kernel, initrd=initrd, content_hash=content_hash,
                        cache_hit=True, kernel_version=manifest.kernel_version)
    return _with_guest_kernel(debian, directory, manifest)


def _with_guest_kernel(debian: GuestImage, directory: Path,
                       manifest: ImageManifest) -> GuestImage | None:
    """The image as default guests boot it: boxui's kernel if the image has one."""
    if manifest.guest_kernel_file is None:
        return debian
    kernel, initrd = directory / manifest.guest_kernel_file, directory / GUEST_INITRD_FILE
    if not kernel.is_file() or not initrd.is_file() or manifest.guest_kernel_version is None:
        return None
    return debian.model_copy(update={
        "kernel": kernel, "initrd": initrd, "kernel_version": manifest.guest_kernel_version,
        "debian_kernel": debian.kernel, "debian_initrd": debian.initrd,
        "debian_kernel_version": debian.kernel_version})


def load_current_image(cache_root: Path) -> GuestImage | None:
    """The image the last `build_default_image` returned, without asking apt anything.

    apt-cache takes ~1 s per call here (no pkgcache.bin), so looking up candidates costs
    2-3 s; starting a machine should not pay that. Callers can start with this image and
    run `build_default_image` in the background to pick up a new kernel.
    """
    try:
        content_hash = json.loads((cache_root / CURRENT_FILE).read_text())["content_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(content_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", content_hash):
        return None
    return load_cached_image(cache_root, content_hash)


def _set_current(cache_root: Path, content_hash: str) -> None:
    atomic_write_bytes(cache_root / CURRENT_FILE,
                       json.dumps({"content_hash": content_hash}).encode(), 0o644)


@contextlib.asynccontextmanager
async def _build_lock(cache_root: Path) -> AsyncIterator[None]:
    """One builder per cache at a time (flock, so a crashed holder releases it)."""
    fd = os.open(cache_root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _remove_leftovers(cache_root: Path) -> None:
    """Delete temp dirs of interrupted builds; only safe while holding the build lock."""
    leftovers = [*cache_root.glob(f"{BUILD_PREFIX}*"), *cache_root.glob(f"{DEBS_DIR}/.download-*")]
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def _write_image(out: Path, final: Path, files: dict[str, bytes]) -> None:
    """Write the image's files into `out`, then give it its name with one rename."""
    for name, data in files.items():
        (out / name).write_bytes(data)
    fsync_tree(out)  # whole and durable before its name makes it an image
    os.rename(out, final)
    fsync_dir(final.parent)


async def _build(
    cache_root: Path,
    content_hash: str,
    debs: dict[str, Path],
    versions: dict[str, str],
    report: ProgressFn,
    small: SmallKernel | None = None,
) -> GuestImage:
    dpkg_deb, cpio = require_tool("dpkg-deb"), require_tool("cpio")
    build_dir = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=cache_root))
    try:
        extracted, root, out = build_dir / "x", build_dir / "root", build_dir / "out"
        for directory in (extracted, root, out):
            directory.mkdir()
        for index, (package, deb) in enumerate(sorted(debs.items()), start=1):
            report("extract", f"unpacking {package} ({index}/{len(debs)})")
            await run([dpkg_deb, "-x", str(deb), str(extracted)], what=f"unpacking {deb.name}")
        report("pack", "assembling the initramfs tree")
        kernel_version = await asyncio.to_thread(assemble_tree, extracted, root)
        report("pack", "packing initrd.img (cpio newc + gzip)")
        initrd = await pack_tree(root, cpio)
        kernel_source = extracted / "boot" / f"vmlinuz-{kernel_version}"
        if not kernel_source.is_file():
            raise GuestImageError(f"kernel package has no boot/vmlinuz-{kernel_version}")
        bzimage = kernel_source.read_bytes()
        report("pack", "unpacking the kernel for direct (PVH) boot")
        vmlinux = await asyncio.to_thread(extract_vmlinux, bzimage)
        manifest = ImageManifest(
            content_hash=content_hash,
            builder_version=BUILDER_VERSION,
            kernel_version=kernel_version,
            kernel_file=KERNEL_FILE if vmlinux is None else PVH_KERNEL_FILE,
            packages=versions,
            created_at=time.time(),
        )
        files = {KERNEL_FILE: bzimage}
        if vmlinux is not None:
            files[PVH_KERNEL_FILE] = vmlinux
        files[INITRD_FILE] = initrd
        if small is not None:
            report("pack", f"adding boxui's kernel {small.version} and its initrd")
            files |= await _guest_kernel_files(small, root, cpio)
            manifest.guest_kernel_file, manifest.guest_initrd_file = (GUEST_KERNEL_FILE,
                                                                      GUEST_INITRD_FILE)
            manifest.guest_kernel_version = small.version
        files[MANIFEST_FILE] = manifest.model_dump_json(indent=2).encode()
        await asyncio.to_thread(_write_image, out, cache_root / content_hash, files)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    booted = manifest.guest_kernel_version or kernel_version
    report("pack", f"image {content_hash[:12]} ready (kernel {booted})")
    image = load_cached_image(cache_root, content_hash)
    if image is None:
        raise GuestImageError(f"image {content_hash[:12]} is incomplete after its build")
    return image.model_copy(update={"cache_hit": False})


async def _guest_kernel_files(small: SmallKernel, root: Path, cpio: str) -> dict[str, bytes]:
    """boxui's kernel (checked against the hash the cache key took) and the initramfs
    without Debian's modules, whose /init loads none."""
    kernel = await asyncio.to_thread(small.path.read_bytes)
    if hashlib.sha256(kernel).hexdigest() != small.sha256:
        raise GuestImageError(f"{small.path} changed since it was built; rebuild it "
                              "(python -m backend.guest.small_kernel)")
    modules = root / GUEST_MODULE_DIR
    for module in modules.iterdir() if modules.is_dir() else ():
        module.unlink()
    (root / "init").write_text(BUILTIN_INIT)
    return {GUEST_KERNEL_FILE: kernel, GUEST_INITRD_FILE: await pack_tree(root, cpio)}


def guest_fingerprint(small: SmallKernel | None) -> str:
    """The guest text for the cache key; with boxui's kernel, its identity too (so an
    image, and every template built on it, is rebuilt when the kernel changes)."""
    text = guest_text_fingerprint()
    if small is None:
        return text
    return text + f"guest-kernel\0{small.version}\0{small.sha256}\0{BUILTIN_INIT}"


async def build_default_image(cache_root: Path, progress: ProgressFn | None = None) -> GuestImage:
    """Return the default guest image, building it (and fetching .debs) only if needed.

    Progress is reported as (phase, message) with phase "download", "extract" or "pack".
    """

    def report(phase: str, message: str) -> None:
        if progress is not None:
            progress(phase, message)

    await asyncio.to_thread(cache_root.mkdir, parents=True, exist_ok=True)
    async with _build_lock(cache_root):
        await asyncio.to_thread(_remove_leftovers, cache_root)
        report("download", "looking up package versions")
        kernel_package = await apt.resolve_kernel_package()
        wanted = await apt.candidates([kernel_package, *apt.USERLAND_PACKAGES])
        report("download", f"checking cached packages: {', '.join(wanted)}")
        debs, fetched = await apt.ensure_debs(cache_root / DEBS_DIR, wanted)
        report(
            "download",
            f"downloaded {', '.join(fetched)}" if fetched else f"all {len(debs)} packages cached",
        )
        apt.prune_debs(cache_root / DEBS_DIR, wanted)
        small = await asyncio.to_thread(find_small_kernel)
        content_hash = await asyncio.to_thread(
            compute_content_hash, debs.values(), guest_fingerprint(small)
        )
        image = load_cached_image(cache_root, content_hash)
        if image is not None:
            report("pack", f"image {content_hash[:12]} already built (cache hit)")
        else:
            versions = {name: cand.version for name, cand in wanted.items()}
            image = await _build(cache_root, content_hash, debs, versions, report, small)
        await asyncio.to_thread(_set_current, cache_root, content_hash)
        return image
