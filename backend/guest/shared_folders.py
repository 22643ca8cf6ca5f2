"""What a guest needs to mount its shared folders at boot: the 9p modules and a script.

Why modules per machine and not in the default image: Debian's kernel has 9p, 9pnet,
9pnet_virtio, netfs and fscache as modules (about 800 KB), and the default guest's
initramfs stays in RAM for its whole life and is part of every template snapshot. So
only a machine that has mounts gets them, in the per-machine archive appended to the
shared initrd (`machine_seed`), beside a script that loads them and mounts each share:
- the default guest runs it as busybox init's `sysinit` entry, which init waits for
  before it starts dropbear, so SSH (and ready) means the folders are there;
- a Debian guest's `/init` runs it just before `switch_root`, under the new root, so
  systemd finds the mounts made (its modules come out of the image, as the disk's do).
A share that cannot be mounted fails the boot (`BOXUI-FAILED`), instead of a guest that
is ready without the folder its user counts on.

Mount options: `version=9p2000.L` (the Linux dialect: modes, symlinks, locks),
`msize=512000` (the largest message the 6.1 virtio transport takes; the default 128 KiB
costs about half the throughput), `cache=mmap`: no page cache beyond what mmap needs, so
a file edited on the host reads fresh in the guest, and programs that mmap (linkers) work.

For the default guest the modules come from the kernel package the image was built from
(`images/debs/`), unpacked once per kernel version into `images/share-modules/`.
boxui's own guest kernel (`small_kernel`) has 9p built in: its machines get the script
alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

from backend.guest.errors import GuestImageError
from backend.guest.guest_files import FAILED_MARKER, GUEST_MODULE_DIR, INITTAB
from backend.guest.newc import Entry
from backend.guest.tools import require_tool
from backend.state.atomic_write import fsync_dir, fsync_tree
from backend.state.mount_spec import MountSpec, mount_tag

#: (name, path under the kernel's modules/<version>/kernel/), in load order
SHARE_MODULES: tuple[tuple[str, str], ...] = (
    ("netfs", "fs/netfs/netfs.ko"),
    ("fscache", "fs/fscache/fscache.ko"),
    ("9pnet", "net/9p/9pnet.ko"),
    ("9pnet_virtio", "net/9p/9pnet_virtio.ko"),
    ("9p", "fs/9p/9p.ko"),
)
MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"
SHARE_MODULE_CACHE = "share-modules"
KERNEL_DEBS = "debs"


def mount_script(mounts: list[MountSpec], modules: bool = True) -> str:
    """`sh SCRIPT [ROOT]`: load the 9p modules (unless the kernel has 9p built in, as
    boxui's own has), mount every share under ROOT (default /)."""
    names = " ".join(name for name, _ in SHARE_MODULES)
    lines = [
        "#!/bin/sh",
        "# boxui: mount this machine's shared folders (virtio-9p) under the root in $1",
        'R="$1"',
        f'fail() {{ echo "{FAILED_MARKER} $1" > /dev/console; sleep 1; poweroff -f; }}',
    ]
    if modules:
        lines += [f"for m in {names}; do",
                  f'  insmod /{GUEST_MODULE_DIR}/$m.ko || fail "insmod-$m"',
                  "done"]
    for index, mount in enumerate(mounts):
        tag, target = mount_tag(index), shlex.quote(mount.guest_dir)
        options = MOUNT_OPTIONS + (",ro" if mount.readonly else "")
        lines += [
            f'mkdir -p "$R"{target} || fail mkdir-{tag}',
            f'mount -t 9p -o {options} {tag} "$R"{target} || '
            f"{{ echo {shlex.quote('boxui: cannot mount the shared folder at ' + mount.guest_dir)}"
            f" > /dev/console; fail mount-{tag}; }}",
        ]
    return "\n".join(lines) + "\n"


def _kernel_deb(images_dir: Path, kernel_version: str) -> Path:
    found = sorted((images_dir / KERNEL_DEBS).glob(f"linux-image-{kernel_version}_*.deb"))
    if not found:
        raise GuestImageError(
            f"shared folders need the 9p modules of kernel {kernel_version}, and its package "
            f"is not in {images_dir / KERNEL_DEBS}; rebuild the default image "
            "(`boxui image build default`)")
    return found[-1]


def _unpack_from_deb(deb: Path, kernel_version: str, target: Path) -> None:
    """Stream the package's data through tarfile, keeping only SHARE_MODULES' files."""
    marker = f"/modules/{kernel_version}/kernel/"
    wanted = {relative: name for name, relative in SHARE_MODULES}
    proc = subprocess.Popen([require_tool("dpkg-deb"), "--fsys-tarfile", str(deb)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                _, found, relative = member.name.partition(marker)
                name = wanted.get(relative) if found else None
                handle = archive.extractfile(member) if name and member.isfile() else None
                if name and handle is not None:
                    (target / f"{name}.ko").write_bytes(handle.read())
    except tarfile.TarError as exc:
        raise GuestImageError(f"{deb.name}: cannot read its files: {exc}") from None
    finally:
        proc.stdout.close()
        proc.wait(timeout=60)


def kernel_share_modules(images_dir: Path, kernel_version: str) -> dict[str, bytes]:
    """SHARE_MODULES for the default guest's kernel, unpacked once (~10 s) and kept."""
    cache = images_dir / SHARE_MODULE_CACHE / kernel_version
    if not cache.is_dir():
        deb = _kernel_deb(images_dir, kernel_version)
        cache.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache.parent))
        try:
            _unpack_from_deb(deb, kernel_version, scratch)
            missing = [n for n, _ in SHARE_MODULES if not (scratch / f"{n}.ko").is_file()]
            if missing:
                raise GuestImageError(f"{deb.name} has no {', '.join(missing)} module")
            fsync_tree(scratch)  # durable before the name makes them a cache
            os.rename(scratch, cache)  # whole or not at all; a racing unpack loses
            fsync_dir(cache.parent)
        except OSError as exc:
            if not cache.is_dir():
                raise GuestImageError(f"cannot keep the 9p modules in {cache}: "
                                      f"{exc.strerror}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return {name: (cache / f"{name}.ko").read_bytes() for name, _ in SHARE_MODULES}


def share_entries(mounts: list[MountSpec], modules: dict[str, bytes],
                  script: str) -> list[Entry]:
    """The modules and the mount script (at `script`), for a per-machine archive; no
    `modules`: a kernel with 9p built in."""
    directory, regular = stat.S_IFDIR, stat.S_IFREG
    entries = []
    if modules:
        entries += [Entry("lib", directory | 0o755), Entry(GUEST_MODULE_DIR, directory | 0o755)]
        entries += [Entry(f"{GUEST_MODULE_DIR}/{name}.ko", regular | 0o644, modules[name])
                    for name, _ in SHARE_MODULES]
    entries.append(Entry(script, regular | 0o755, mount_script(mounts, bool(modules)).encode()))
    return entries


def default_guest_share_entries(mounts: list[MountSpec],
                                modules: dict[str, bytes]) -> list[Entry]:
    """For the busybox guest: the script runs as init's `sysinit` entry, which init
    finishes before the `respawn` (dropbear) and `once` (the ready marker) entries; the
    inittab in this archive replaces the image's."""
    script = "etc/boxui/mounts"
    inittab = f"::sysinit:/{script}\n{INITTAB}"
    return [*share_entries(mounts, modules, script),
            Entry("etc/inittab", stat.S_IFREG | 0o644, inittab.encode())]
