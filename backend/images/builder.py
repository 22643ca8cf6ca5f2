"""Building an image from its recipe: resolve, bootstrap, trim, pack, publish.

All work happens in `<state>/images/os/.build-<name>-*/` (the same filesystem as the
images, so publishing is a rename): mmdebstrap writes a tar there, it is unpacked,
trimmed (`trim`), packed with `mkfs.ext4 -d` (no mounts, no loop devices), and
`image.json` is written last, in the new image's directory, before that directory is
renamed into place. A build that fails, is cancelled or is killed therefore never leaves
an image, only a temp dir the next build removes (under the build lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from backend.images import mmdebstrap
from backend.images.cache_key import cache_key, index_digests
from backend.images.errors import ImageBuildError, ImageInUseError, disk_full
from backend.images.kernel import (
    KernelModules,
    KernelSource,
    default_kernel,
    modules_tree,
    prune_modules,
)
from backend.images.progress import ImageProgress
from backend.images.recipe import Recipe, load_recipe
from backend.images.store import (
    BUILD_PREFIX,
    INFO_FILE,
    ROOTFS_FILE,
    ImageInfo,
    discard_dir,
    find_image,
    os_images_dir,
    remove_leftovers,
)
from backend.images.trim import trim
from backend.state.atomic_write import atomic_write_bytes, fsync_dir, fsync_tree, os_error_reason
from backend.state.state_dir import StateDir

ProgressFn = Callable[[ImageProgress], None]
IndexFn = Callable[[list[str]], Awaitable[dict[str, str]]]
LOCK_FILE = ".lock"
#: head room of the packed filesystem over its contents; the guest grows it at first boot
SLACK_BYTES = 64 << 20


@dataclass(frozen=True)
class BuildTools:
    """What a build reaches outside itself; tests swap in stand-ins."""

    kernel: KernelSource = default_kernel
    index: IndexFn = index_digests
    mmdebstrap: str = "mmdebstrap"
    mkfs: str = "mkfs.ext4"
    tar: str = "tar"


@dataclass(frozen=True)
class BuildResult:
    image: ImageInfo
    cache_hit: bool
    notes: list[str] = field(default_factory=list)


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        package = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs"}.get(name, name)
        raise ImageBuildError("starting", f"{name} not found: install it with "
                              f"`apt-get install {package}`")
    return found


@contextlib.asynccontextmanager
async def _build_lock(os_dir: Path, report: ProgressFn) -> AsyncIterator[None]:
    """One image build per state dir at a time (flock: a killed holder releases it).
    Polled, as the default guest's build lock is: flock has no async wait."""
    fd = os.open(os_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    report(ImageProgress(step="resolving",
                                         message="waiting for another image build"))
                    told = True
                await asyncio.sleep(0.5)
        yield
    finally:
        os.close(fd)


async def build_image(dirs: StateDir, name: str, progress: ProgressFn | None = None, *,
                      users: Callable[[str], list[str]] = lambda _name: [],
                      tools: BuildTools | None = None) -> BuildResult:
    """Build image `name` from its recipe, or find it already built from the same inputs.
    Replacing a built image whose inputs changed is refused while `users(name)` names
    machines: their disks are overlays on it."""
    tools = tools or BuildTools()

    def report(event: ImageProgress) -> None:
        if progress is not None:
            progress(event)

    recipe = await asyncio.to_thread(load_recipe, dirs, name)
    os_dir = os_images_dir(dirs)
    await asyncio.to_thread(os_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
    async with _build_lock(os_dir, report):
        await asyncio.to_thread(remove_leftovers, dirs)
        report(ImageProgress(step="resolving", message="finding the kernel machines boot"))
        kernel = await tools.kernel(dirs, report)
        report(ImageProgress(step="resolving", message="reading the archive's index"))
        key = cache_key(recipe, await tools.index(recipe.sources()), kernel.version)
        old = await asyncio.to_thread(find_image, dirs, name)
        if old is not None and old.hash == key:
            report(ImageProgress(step="done", message=f"image {name} is up to date "
                                 f"({key[:12]}, cache hit)"))
            return BuildResult(old, cache_hit=True)
        if old is not None and (using := await asyncio.to_thread(users, name)):
            raise ImageInUseError(name, using)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{BUILD_PREFIX}{name}-",
                                            dir=os_dir))
        try:
            info = await _build(recipe, key, kernel, work, tools, report)
            await asyncio.to_thread(_publish, work / "image", os_dir / name)
        finally:
            await _remove_dir(work)
    report(ImageProgress(step="done", message=f"image {name} built ({key[:12]}, "
                         f"{info.size_bytes >> 20} MiB, {info.packages} packages)"))
    return BuildResult(info.model_copy(update={"path": os_dir / name}), cache_hit=False)


async def _remove_dir(path: Path) -> None:
    """Remove a build's temp dir even when cancelled twice (a client that leaves cancels
    the build, and the server tearing its stream down may cancel again): the thread's job
    is shielded, as `to_thread` would drop a job still queued when its await is cancelled.
    """
    job = asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, path, True)
    await asyncio.shield(job)


async def _build(recipe: Recipe, key: str, kernel: KernelModules, work: Path,
                 tools: BuildTools, report: ProgressFn) -> ImageInfo:
    try:
        overlay, files_dir, tmp, out = (work / part for part in
                                        ("overlay", "files", "tmp", "image"))
        for directory in (overlay, files_dir, tmp, out):
            directory.mkdir()
        await _stage_inputs(recipe, kernel, work, overlay, files_dir)
        tar = work / "rootfs.tar"
        args = mmdebstrap.argv(_tool(tools.mmdebstrap), recipe, tar,
                               mmdebstrap.hooks(recipe, overlay, files_dir, kernel.version))
        await mmdebstrap.run_mmdebstrap(args, tmp, report)
        return await _pack(recipe, key, kernel, work, tar, out, tools, report)
    except OSError as exc:  # our own writes: a full disk is the one to expect
        where = "no space left on device" if exc.errno == errno.ENOSPC else \
            os_error_reason(exc)
        raise ImageBuildError("packing", f"{where} under {work.parent}") from None


async def _stage_inputs(recipe: Recipe, kernel: KernelModules, work: Path, overlay: Path,
                        files_dir: Path) -> None:
    """The modules (synced into /usr/lib/modules: /lib is a link to it) and the recipe's
    files, where mmdebstrap's hooks pick them up."""
    tree = await modules_tree(kernel, work)
    target = overlay / "usr" / "lib" / "modules" / kernel.version
    target.parent.mkdir(parents=True)
    # the hook syncs these directories' modes into the image: made under the state dir's
    # private umask they would be 0700, and only root could run anything in /usr
    for directory in (overlay / "usr", overlay / "usr" / "lib", target.parent):
        directory.chmod(0o755)
    if tree.is_relative_to(work):  # unpacked for this build: moved, not copied (~390 MB)
        tree.rename(target)
    else:
        await asyncio.to_thread(shutil.copytree, tree, target, symlinks=True)
    await asyncio.to_thread(prune_modules, target)
    for index, item in enumerate(recipe.files):
        (files_dir / str(index)).write_text(item.content, encoding="utf-8")


async def _pack(recipe: Recipe, key: str, kernel: KernelModules, work: Path, tar: Path,
                out: Path, tools: BuildTools, report: ProgressFn) -> ImageInfo:
    root = work / "root"
    root.mkdir(mode=0o755)
    report(ImageProgress(step="packing", message="unpacking the root filesystem"))
    await _run([_tool(tools.tar), "--extract", "--preserve-permissions", "--numeric-owner",
                "--xattrs", "--xattrs-include=*", "--file", str(tar), "--directory",
                str(root)], "packing (unpacking the root filesystem)", work)
    report(ImageProgress(step="packing", message="trimming systemd for a fast boot"))
    content, inodes, packages = await asyncio.to_thread(_prepare_root, tar, root)
    size_mib = (content + content // 5 + SLACK_BYTES + (1 << 20) - 1) >> 20
    report(ImageProgress(step="packing", message=f"packing {ROOTFS_FILE} ({size_mib} MiB)"))
    rootfs = out / ROOTFS_FILE
    await _run([_tool(tools.mkfs), "-q", "-F", "-t", "ext4", "-L", "boxui-root",
                "-N", str(max(inodes * 2, 32768)), "-d", str(root), str(rootfs),
                f"{size_mib}M"], "packing (mkfs.ext4)", work)
    await asyncio.to_thread(shutil.rmtree, root, True)
    return await asyncio.to_thread(_describe, recipe, key, kernel, out, packages)


def _prepare_root(tar: Path, root: Path) -> tuple[int, int, int]:
    tar.unlink()
    trim(root)
    content, inodes = _measure(root)
    return content, inodes, _count_packages(root)


def _describe(recipe: Recipe, key: str, kernel: KernelModules, out: Path,
              packages: int) -> ImageInfo:
    """`image.json`, the last file of an image: written only once all else is."""
    rootfs = out / ROOTFS_FILE
    info = ImageInfo(name=recipe.name, recipe=recipe.name, hash=key,
                     built_at=datetime.now(UTC), size_bytes=rootfs.stat().st_size,
                     kernel_version=kernel.version, packages=packages)
    os.chmod(rootfs, 0o444)  # read-only to machines: their writes go to their overlays
    atomic_write_bytes(out / INFO_FILE, info.model_dump_json(indent=2).encode(), 0o644)
    return info


def _measure(root: Path) -> tuple[int, int]:
    total, count = 0, 0
    for current, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            count += 1
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(current, entry)).st_blocks * 512
    return total, count


def _count_packages(root: Path) -> int:
    try:
        status = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return status.count("Status: install ok installed")


async def _run(args: list[str], step: str, where: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        text = output.decode(errors="replace")
        reason = (f"no space left on device under {where}"
                  if "No space left" in text or disk_full(where)
                  else " ".join(text.split())[-300:] or "no output")
        raise ImageBuildError(step, f"{reason} (exit {proc.returncode})")


def _publish(built: Path, final: Path) -> None:
    """The new image takes the name; an old one under it is renamed away, then deleted."""
    fsync_tree(built)
    if final.exists():
        discard_dir(final)
    os.rename(built, final)
    fsync_dir(final.parent)
