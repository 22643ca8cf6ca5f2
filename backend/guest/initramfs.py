"""Laying out and packing the guest's initramfs from extracted Debian packages.

Layout: busybox (applet links are made by `/init` at boot with `--install -s`, so the
host never runs a guest binary), dropbear plus exactly the libraries its DT_NEEDED
closure names (resolved here so a missing one fails the build, not the boot), the
kernel modules from `guest_files.MODULES` flat in `/lib/boxui-modules` (load order
checked against each module's `depends=`), and the generated text files.

Packing uses GNU cpio (newc, owner 0:0, --reproducible) with the file list on stdin
and every mtime zeroed, then gzip with mtime 0: the same inputs give the same bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import lzma
import os
import shutil
from pathlib import Path

from backend.guest.elf import needed_libraries
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import GUEST_MODULE_DIR, GUEST_TEXT_FILES, MODULES
from backend.guest.tools import run

_MULTIARCH = "x86_64-linux-gnu"
_LIB_DIRS = (f"lib/{_MULTIARCH}", f"usr/lib/{_MULTIARCH}")
_DYNAMIC_BINARIES = ("usr/sbin/dropbear",)
_INTERPRETER = "ld-linux-x86-64.so.2"


def _find_library(extracted: Path, soname: str) -> Path:
    for lib_dir in _LIB_DIRS:
        candidate = extracted / lib_dir / soname
        if candidate.exists():
            return candidate.resolve()
    raise GuestImageError(f"library {soname} not found in the extracted packages")


def _copy_libraries(extracted: Path, root: Path) -> list[str]:
    """Copy the DT_NEEDED closure of the guest's dynamic binaries; return the sonames."""
    pending = [extracted / binary for binary in _DYNAMIC_BINARIES]
    copied: set[str] = set()
    while pending:
        for soname in needed_libraries(pending.pop()):
            if soname in copied:
                continue
            source = _find_library(extracted, soname)
            shutil.copy2(source, root / "lib" / _MULTIARCH / soname)
            copied.add(soname)
            pending.append(source)
    if _INTERPRETER not in copied:
        source = _find_library(extracted, _INTERPRETER)
        shutil.copy2(source, root / "lib" / _MULTIARCH / _INTERPRETER)
        copied.add(_INTERPRETER)
    # the binaries' PT_INTERP is /lib64/ld-linux-x86-64.so.2
    (root / "lib64" / _INTERPRETER).symlink_to(f"../lib/{_MULTIARCH}/{_INTERPRETER}")
    return sorted(copied)


def _module_depends(blob: bytes) -> list[str]:
    start = blob.find(b"\0depends=")
    if start < 0:
        return []
    value = blob[start + len(b"\0depends=") : blob.index(b"\0", start + 1)]
    return [name for name in value.decode().split(",") if name]


def _copy_modules(extracted: Path, root: Path) -> str:
    """Copy the guest's kernel modules flat, checking the load order; return the version."""
    versions = [p.name for p in (extracted / "lib/modules").iterdir() if p.is_dir()]
    if len(versions) != 1:
        raise GuestImageError(f"expected one kernel module tree, found {versions or 'none'}")
    kernel_tree = extracted / "lib/modules" / versions[0] / "kernel"
    loaded: set[str] = set()
    for name, relative in MODULES:
        plain, packed = kernel_tree / relative, kernel_tree / f"{relative}.xz"
        if plain.is_file():
            blob = plain.read_bytes()
        elif packed.is_file():
            blob = lzma.decompress(packed.read_bytes())
        else:
            raise GuestImageError(f"kernel module {relative} missing from kernel {versions[0]}")
        unmet = [dep for dep in _module_depends(blob) if dep.replace("-", "_") not in loaded]
        if unmet:
            raise GuestImageError(f"module {name} needs {', '.join(unmet)} loaded before it")
        (root / GUEST_MODULE_DIR / f"{name}.ko").write_bytes(blob)
        loaded.add(name.replace("-", "_"))
    return versions[0]


_DIRS: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "lib": 0o755, f"lib/{_MULTIARCH}": 0o755, "lib64": 0o755, GUEST_MODULE_DIR: 0o755,
    "etc": 0o755, "etc/dropbear": 0o755, "etc/boxui": 0o755, "etc/acpi": 0o755,
    "etc/acpi/PWRF": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755,
    "tmp": 0o1777, "var": 0o755, "var/log": 0o755, "root": 0o700, "root/.ssh": 0o700,
}  # fmt: skip


def assemble_tree(extracted: Path, root: Path) -> str:
    """Lay out the initramfs under `root`; return the kernel version."""
    for relative, mode in _DIRS.items():
        (root / relative).mkdir(parents=True, exist_ok=True)
        (root / relative).chmod(mode)
    (root / "var/run").symlink_to("../run")
    shutil.copy2(extracted / "bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")  # /init needs a shell before --install runs
    shutil.copy2(extracted / "usr/sbin/dropbear", root / "usr/sbin/dropbear")
    _copy_libraries(extracted, root)
    version = _copy_modules(extracted, root)
    for relative, (mode, text) in GUEST_TEXT_FILES.items():
        target = root / relative
        target.write_text(text)
        target.chmod(mode)
    return version


def _tree_listing(root: Path) -> list[str]:
    """Every path under `root`, parents first; mtimes zeroed so packing is reproducible."""
    names: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        base = Path(directory)
        links = [name for name in subdirs if (base / name).is_symlink()]  # walk skips them
        for entry in [base, *(base / name for name in sorted([*files, *links]))]:
            os.utime(entry, (0, 0), follow_symlinks=False)
            names.append(entry.relative_to(root).as_posix())
    return names


async def pack_tree(root: Path, cpio: str) -> bytes:
    file_list = b"".join(name.encode() + b"\0" for name in _tree_listing(root))
    archive = await run(
        [cpio, "--create", "--format=newc", "--null", "--owner=0:0", "--reproducible", "--quiet"],
        cwd=root,
        stdin=file_list,
        what="packing the initramfs with cpio",
    )
    return await asyncio.to_thread(gzip.compress, archive, 9, mtime=0)
