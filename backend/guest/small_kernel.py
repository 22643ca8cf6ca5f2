"""boxui's own guest kernel: Linux from Debian's `linux-source-6.1`, configured small.

Why: with Debian's kernel an idle default guest costs ~190 MiB of host memory, and 57 MiB
of it is the uncompressed kernel itself in guest RAM, with a translation buffer full of
code for drivers a microVM never has. `kernel/boxui.config` (a fragment applied to
`make allnoconfig`, each option there says what it is for) builds everything the
default guest uses into a kernel of a few MiB with no modules.

Built once by `bin/setup` (`python -m backend.guest.small_kernel`), outside any boot:
~3 min on two idle cores; in the background when a user's first run sets
up, in the foreground for the tests (`bin/setup --dev`). Kept in the kernel cache
(`$BOXUI_KERNEL_CACHE`, else `$XDG_CACHE_HOME/boxui/kernels`) as `<key>/vmlinux` +
`kernel.json`, the key hashing the fragment, this builder's version and the source
package's version; lookups match the fragment's hash and take the newest source. A build
happens in `.build-*` and is renamed into place whole. No kernel (never built, or the
build failed): the default image boots Debian's kernel as before; Debian (OS) images
always do."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.guest.elf import has_pvh_entry
from backend.guest.errors import GuestImageError
from backend.state.atomic_write import atomic_write_bytes, fsync_dir, fsync_tree

CONFIG_FRAGMENT = Path(__file__).resolve().parent / "kernel" / "boxui.config"
#: bump when the way the kernel is built changes (not its inputs)
KERNEL_BUILDER_VERSION = "boxui-kernel/1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_PACKAGE = "linux-source-6.1"
KERNEL_FILE = "vmlinux"
INFO_FILE = "kernel.json"
_BUILD_PREFIX = ".build-"
#: fixed build identity, so the same inputs give the same `uname -v`
_BUILD_ENV = {"KBUILD_BUILD_TIMESTAMP": "2024-01-01", "KBUILD_BUILD_USER": "boxui",
              "KBUILD_BUILD_HOST": "boxui"}
_OPTION = re.compile(r"(CONFIG_\w+)=(.*)")


@dataclass(frozen=True)
class SmallKernel:
    path: Path
    version: str  # `uname -r`, e.g. 6.1.176-boxui
    sha256: str  # of the kernel file: part of the default image's cache key


def kernel_cache_dir() -> Path:
    explicit = os.environ.get("BOXUI_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "boxui" / "kernels"


def config_digest(fragment: Path = CONFIG_FRAGMENT) -> str:
    data = fragment.read_bytes()
    return hashlib.sha256(KERNEL_BUILDER_VERSION.encode() + b"\0" + data).hexdigest()


def find_small_kernel(cache: Path | None = None) -> SmallKernel | None:
    """The newest built kernel of the current fragment, or None (then Debian's boots)."""
    if os.environ.get("BOXUI_GUEST_KERNEL") == "debian":
        return None  # asked for Debian's kernel (bin/setup skips the build too)
    root = kernel_cache_dir() if cache is None else cache
    want, found = config_digest(), []
    for info_file in root.glob(f"*/{INFO_FILE}"):
        try:
            info = json.loads(info_file.read_text())
            if info["config_sha256"] != want or not (info_file.parent / KERNEL_FILE).is_file():
                continue
            found.append((float(info["built_at"]), SmallKernel(
                info_file.parent / KERNEL_FILE, str(info["version"]), str(info["sha256"]))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(found, key=lambda item: item[0])[1] if found else None


def required_options(fragment: Path = CONFIG_FRAGMENT) -> dict[str, str]:
    """Every `CONFIG_X=value` the fragment sets (comments and `is not set` lines aside)."""
    options = {}
    for line in fragment.read_text().splitlines():
        match = _OPTION.fullmatch(line.strip())
        if match:
            options[match[1]] = match[2]
    return options


def dropped_options(config_text: str, fragment: Path = CONFIG_FRAGMENT) -> list[str]:
    """Options of the fragment that the final .config lacks: Kconfig drops a symbol whose
    dependencies are unmet without a word, so the build checks each one."""
    have = set(config_text.splitlines())
    return [f"{k}={v}" for k, v in required_options(fragment).items() if f"{k}={v}" not in have]


def source_version() -> str:
    """The Debian version of the installed kernel source (part of the cache key)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
                             capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        raise GuestImageError(f"{SOURCE_PACKAGE} is not installed: "
                              f"apt-get install {SOURCE_PACKAGE}") from None
    return out.stdout.strip()


def _step(argv: list[str], cwd: Path, what: str, log: Path) -> None:
    """Run one build step, its output to `log`; a failure names the step and the log."""
    with log.open("ab") as out:
        result = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **_BUILD_ENV},
                                check=False)
    if result.returncode != 0:
        raise GuestImageError(f"{what} failed (exit {result.returncode}); see {log}")


def _compile(work: Path, jobs: int, log: Path, tree: Path | None) -> tuple[Path, str]:
    """Unpack (unless given a `tree` of this source to build in), configure, check the
    configuration, build; the vmlinux and its version."""
    if tree is None:
        _step(["tar", "-xf", str(SOURCE_TARBALL), "-C", str(work)], work,
              "unpacking the source", log)
        tree = next(work.glob("linux-source-*"))
    _step(["make", "-s", "allnoconfig", f"KCONFIG_ALLCONFIG={CONFIG_FRAGMENT}"], tree,
          "configuring", log)
    dropped = dropped_options((tree / ".config").read_text())
    if dropped:
        raise GuestImageError(f"the kernel configuration lost {', '.join(dropped)} "
                              f"(unmet dependencies in {CONFIG_FRAGMENT.name})")
    _step(["make", f"-j{jobs}", "vmlinux"], tree, "compiling", log)
    version = (tree / "include/config/kernel.release").read_text().strip()
    stripped = work / KERNEL_FILE
    # what the kernel's own bzImage packs: no symbols, no .comment
    _step(["objcopy", "-R", ".comment", "-S", str(tree / "vmlinux"), str(stripped)], tree,
          "stripping vmlinux", log)
    if not has_pvh_entry(stripped.read_bytes()):
        raise GuestImageError("the built kernel has no PVH entry point (CONFIG_PVH)")
    return stripped, version


def build_small_kernel(cache: Path, jobs: int, log: Path,
                       say: Callable[[str], None] = lambda _m: None,
                       tree: Path | None = None) -> SmallKernel:
    """Build the kernel of the current fragment into `cache` unless it is there."""
    if not SOURCE_TARBALL.is_file():
        raise GuestImageError(f"{SOURCE_TARBALL} missing: apt-get install {SOURCE_PACKAGE}")
    digest, source = config_digest(), source_version()
    key = hashlib.sha256(f"{digest}\0{source}".encode()).hexdigest()
    final = cache / key
    cache.mkdir(parents=True, exist_ok=True)
    # one build per cache at a time: a second bin/setup (or a background build) waits
    # here, then finds the first one's kernel instead of deleting its work in progress
    with open(cache / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = find_small_kernel(cache)
        if existing is not None and existing.path.parent == final:
            return existing
        return _build_locked(cache, final, digest, source, jobs, log, say, tree)


def _build_locked(cache: Path, final: Path, digest: str, source: str, jobs: int, log: Path,
                  say: Callable[[str], None], tree: Path | None) -> SmallKernel:
    for leftover in cache.glob(f"{_BUILD_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=cache))
    say(f"building boxui's guest kernel (once per configuration, ~3 min on two idle cores; "
        f"log: {log})")
    try:
        vmlinux, version = _compile(work, jobs, log, tree)
        out = work / "out"
        out.mkdir()
        data = vmlinux.read_bytes()
        kernel = SmallKernel(final / KERNEL_FILE, version, hashlib.sha256(data).hexdigest())
        atomic_write_bytes(out / KERNEL_FILE, data, 0o644)
        info = {"version": version, "sha256": kernel.sha256, "config_sha256": digest,
                "source_package": f"{SOURCE_PACKAGE} {source}", "built_at": time.time()}
        atomic_write_bytes(out / INFO_FILE, json.dumps(info, indent=2).encode(), 0o644)
        fsync_tree(out)
        os.rename(out, final)
        fsync_dir(cache)
        return kernel
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.guest.small_kernel",
                                     description="build boxui's guest kernel (bin/setup)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--source-tree", type=Path, default=None,
                        help="build in this unpacked linux-source tree (kept; a rebuild "
                             "there is incremental) instead of a fresh copy")
    args = parser.parse_args(argv)
    cache = kernel_cache_dir() if args.cache is None else args.cache
    log = Path(tempfile.gettempdir()) / "boxui-kernel-build.log"
    before, started = find_small_kernel(cache), time.monotonic()
    try:
        log.write_bytes(b"")
        kernel = build_small_kernel(cache, args.jobs, log,
                                    lambda line: print(f"boxui: {line}", file=sys.stderr),
                                    args.source_tree)
    except (GuestImageError, OSError) as exc:
        print(f"boxui: building the guest kernel failed: {exc}", file=sys.stderr)
        return 1
    if kernel == before:
        return 0  # built before: nothing to say on every bin/setup
    size = kernel.path.stat().st_size / 2**20
    print(f"boxui: guest kernel {kernel.version} ({size:.1f} MiB) at {kernel.path} "
          f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
