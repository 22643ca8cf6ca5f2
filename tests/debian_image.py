"""A small Debian image for disk-machine tests, in the image store's on-disk format.

Why the tests build their own: the real recipes (`debian-12`, ...) are built by the image
builder; these tests only need *an* image of the agreed shape, built once per host and
kept under the shared guest cache (`tests/conftest.IMAGE_CACHE/os/<name>/`). It follows
`shared/notes/debian-guest.md`: mmdebstrap minbase, the default guest kernel's modules
copied in (the rootfs has none of its own), boxui's own trim (`backend.images.trim`: the
boot tests boot what users boot), `mkfs.ext4 -d`, no mounts, no SSH host keys.
`image.json` is written last, so a half-built directory is never taken for an image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from backend.images.store import read_info
from backend.images.trim import trim, trim_digest

#: not the older "debian-12-mini" (its own masks, not the trim), which other checkouts may
#: still share in the same cache
IMAGE_NAME = "debian-12-trimmed"
PACKAGES = ["systemd-sysv", "udev", "openssh-server", "iproute2", "kmod", "e2fsprogs"]
#: a change to what goes in (the trim too) gives a new build
INPUTS_HASH = hashlib.sha256(repr((PACKAGES, trim_digest())).encode()).hexdigest()[:16]


def _kernel_deb(cache: Path) -> Path:
    debs = sorted((cache / "debs").glob("linux-image-*.deb"))
    if not debs:
        raise RuntimeError(f"no kernel package under {cache}/debs: build the default image")
    return debs[-1]


def _install_modules(root: Path, deb: Path, scratch: Path) -> str:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch)], check=True)
    (version,) = [p.name for p in (scratch / "lib/modules").iterdir()]
    target = root / "usr/lib/modules" / version
    shutil.copytree(scratch / "lib/modules" / version, target, symlinks=True)
    subprocess.run(["chroot", str(root), "depmod", "-a", version], check=True)
    return version


def _current(target: Path) -> bool:
    """Built from these inputs, and readable by the image store (an older format is not)."""
    info = read_info(target)
    return info is not None and info.hash == INPUTS_HASH


def build_image(cache: Path, name: str = IMAGE_NAME) -> Path:
    """`cache/os/<name>/` with rootfs.ext4 and image.json; built once, under a lock."""
    target = cache / "os" / name
    if _current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (cache / "os" / ".test-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _current(target):
            return target
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="bx-img-") as tmp:
            root, scratch = Path(tmp) / "root", Path(tmp) / "k"
            subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase",
                            "--include=" + ",".join(PACKAGES), "bookworm", str(root)],
                           check=True, stdin=subprocess.DEVNULL)
            version = _install_modules(root, _kernel_deb(cache), scratch)
            trim(root)
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            rootfs = target / "rootfs.ext4"
            subprocess.run(["mkfs.ext4", "-q", "-d", str(root), str(rootfs), "1G"],
                           check=True)
            meta = {"name": name, "recipe": "tests", "hash": INPUTS_HASH,
                    "built_at": time.time(), "size_bytes": rootfs.stat().st_size,
                    "kernel_version": version, "packages": 0}
            tmp_meta = target / "image.json.tmp"
            tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
            os.rename(tmp_meta, target / "image.json")
    return target


if __name__ == "__main__":
    import sys

    print(build_image(Path(sys.argv[1]) if len(sys.argv) > 1 else
                      Path(os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache"))))
