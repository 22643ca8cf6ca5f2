"""The per-machine initramfs that boots a Debian image from the machine's own disk.

Why an initramfs of boxui's and not Debian's: the image has no kernel or initramfs of its
own (`initramfs-tools` would make every build slower and every boot wait on its scripts).
The default guest's initrd already has busybox and the virtio modules for this kernel:
its busybox, libraries and modules go in *uncompressed*, without dropbear and the
libraries only dropbear needs (the image has OpenSSH). Under TCG the kernel's gunzip of
the default initrd's 3 MB took ~1.6 s of the boot; copying 5 MB of plain cpio is a
fraction of that, and the file is read by QEMU on the host, where size costs nothing.
Appended to it (see `machine_seed`) goes an archive with a different `/init`, the
block and ext4 modules (read out of the image's own `/lib/modules` with `debugfs`, no
mounts) and this machine's secrets. `/init` then:
- loads the modules in the order found to work (virtio, virtio_blk, crc16, mbcache,
  jbd2, crc32c_generic, ext4, then the default guest's: net, console, balloon, rng,
  the ACPI power button; virtio_pci only when there is a PCI bus, as on a libvirt
  host's q35: on microvm it found nothing, and each insmod costs tens of ms under TCG),
  mounts /dev/vda read-write;
- grows the filesystem to the disk when the disk's size differs from the one it last
  grew to (online `resize2fs` in the mounted root, so no binary of its own is needed;
  the size is remembered in `/etc/boxui/grown-sectors`, so later boots skip it); a
  disk of the image's own size (the default) is seen to fit from the superblock, as
  `resize2fs` finding nothing to do still cost its start under TCG on every first boot;
- installs the host key (OpenSSH format, 0600; every other host key is removed so the
  guest can only present this machine's identity), the user's authorized key (0600),
  the hostname, /etc/hosts and a resolver, and the unit that prints the ready marker
  once sshd listens (sshd and that unit start without waiting for sysinit.target);
- boots systemd to `boxui-boot.target` (`systemd.unit=` in `DEBIAN_KERNEL_ARGS`), which
  wants only sshd and that unit; the ready unit starts `default.target` (the rest of a
  normal boot: journald, udevd, tmpfiles, ...) once it has printed the marker. Booting
  to graphical.target, systemd loaded ~55 units and queued jobs for all of them before
  it started sshd ("Loaded units and determined initial transaction in 1.6s" under
  TCG), and journald then started beside sshd. That work is moved, not gone: it now
  runs right after the marker, beside the host's first SSH handshake;
- mounts the machine's shared folders under the new root, if it has any
  (`shared_folders`: their script and 9p modules come in the same archive);
- configures eth0 for QEMU's user-mode network (kept across `switch_root`; with
  `net.ifnames=0` udev leaves its name alone), then `switch_root`s to systemd.
Every step that leaves the guest unable to become ready prints `BOXUI-FAILED <why>` and
powers off, so the host fails the boot at once instead of waiting out its timeout.
"""

from __future__ import annotations

import functools
import gzip
import lzma
import os
import stat
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.guest.elf import needed_sonames
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import FAILED_MARKER, GUEST_MODULE_DIR, MODULES, READY_MARKER
from backend.guest.machine_seed import MachineKeys, concatenate_initrd
from backend.guest.newc import Entry, read_archive, write_archive
from backend.guest.tools import require_tool
from backend.state.atomic_write import atomic_write_bytes

DEBIAN_INITRD_FILE = "initrd-debian.img"
#: what the kernel needs besides the defaults: no root= (the initramfs mounts it), eth0
#: keeps its name, systemd's status lines stay off the (slow, TCG) serial console, and
#: no crypto self-tests (`initcall_debug`: crypto_algapi_init waited 4.6 s of a 14 s
#: kernel start under TCG for them; they check the kernel's own ciphers, not the guest);
#: systemd boots to boxui's own target (see the module docstring); no AppArmor (the
#: image has no profiles, and its hooks run on every file access), no kernel audit (no
#: auditd; journald's audit socket then has nothing to read), no lockup watchdogs (a
#: microVM's vCPU is a host thread: a stall is the host's, and the watchdog's timers
#: only wake the guest)
BOOT_TARGET = "boxui-boot.target"
DEBIAN_KERNEL_ARGS = ("net.ifnames=0 systemd.show_status=false cryptomgr.notests "
                      f"systemd.unit={BOOT_TARGET} apparmor=0 audit=0 nowatchdog")
#: modules the default initrd lacks, as (name, path under kernel/), in load order
DISK_MODULES: tuple[tuple[str, str], ...] = (
    ("virtio_blk", "drivers/block/virtio_blk.ko"),
    ("crc16", "lib/crc16.ko"),
    ("mbcache", "fs/mbcache.ko"),
    ("jbd2", "fs/jbd2/jbd2.ko"),
    ("crc32c_generic", "crypto/crc32c_generic.ko"),
    ("ext4", "fs/ext4/ext4.ko"),
)
LOAD_ORDER = [name for name, _ in (*MODULES[:3], *DISK_MODULES, *MODULES[3:])]
_SEED = "boxui"  # where the secrets wait in the initramfs until /init copies them
DEBIAN_MOUNT_SCRIPT = f"{_SEED}/mounts"  # the shared folders' (`shared_folders`)

#: a filesystem that already fills the disk needs no grow: the superblock's
#: s_blocks_count_lo and s_log_block_size (bytes 1028 and 1048) against the disk's
#: sectors; the if below then finds the size recorded
_FITS = """set -- $(dd if=/dev/vda bs=4 skip=257 count=6 2>/dev/null | od -An -tu4)
[ "$#" = 6 ] && [ "$(($1 * (2 << $6)))" = "$sectors" ] && \\
  echo "$sectors" > $R/etc/boxui/grown-sectors
"""

_INIT = f"""#!/bin/sh
# boxui Debian-guest /init: mount the machine's disk, install its identity, hand over.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "{FAILED_MARKER} $1" > /dev/console; sleep 1; poweroff -f; }}
set -- /sys/bus/pci/devices/*
[ -e "$1" ] && pci=yes || pci=no  # microvm: no PCI bus, its transport's modules idle
for m in {' '.join(LOAD_ORDER)}; do
  case "$pci$m" in novirtio_pci*) continue ;; esac
  insmod /{GUEST_MODULE_DIR}/$m.ko || fail "insmod-$m"
done
name=boxui
boot_id=unknown
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    boxui.name=*) name="${{arg#boxui.name=}}" ;;
    boxui.boot_id=*) boot_id="${{arg#boxui.boot_id=}}" ;;
  esac
done
cat /{_SEED}/random-seed > /dev/urandom
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ "$i" -gt 500 ] && fail no-disk; usleep 10000
done
R=/newroot
mkdir -p $R
mount -t ext4 -o rw,noatime /dev/vda $R || fail mount-root
mkdir -p $R/etc/boxui $R/etc/ssh $R/root/.ssh $R/etc/systemd/system/multi-user.target.wants
sectors=$(cat /sys/block/vda/size)
{_FITS}if [ "$(cat $R/etc/boxui/grown-sectors 2>/dev/null)" != "$sectors" ]; then
  mount --bind /dev $R/dev && mount -t proc proc $R/proc
  if chroot $R resize2fs /dev/vda > /dev/null 2>&1; then
    echo "$sectors" > $R/etc/boxui/grown-sectors
  else
    echo "boxui: growing the root filesystem failed; it keeps its size" > /dev/console
  fi
  umount $R/proc; umount $R/dev
fi
rm -f $R/etc/ssh/ssh_host_*
cp -p /{_SEED}/ssh_host_ed25519_key /{_SEED}/ssh_host_ed25519_key.pub $R/etc/ssh/
chmod 700 $R/root $R/root/.ssh
cp -p /{_SEED}/authorized_keys $R/root/.ssh/authorized_keys
cp -p /{_SEED}/ready $R/etc/boxui/ready
cp -p /{_SEED}/boxui-ready.service /{_SEED}/{BOOT_TARGET} $R/etc/systemd/system/
mkdir -p $R/etc/systemd/system/ssh.service.d
cp -p /{_SEED}/ssh-early.conf $R/etc/systemd/system/ssh.service.d/boxui-early.conf
ln -sf /etc/systemd/system/boxui-ready.service \\
  $R/etc/systemd/system/multi-user.target.wants/boxui-ready.service
echo "$boot_id" > $R/etc/boxui/boot-id
echo "$name" > $R/etc/hostname
printf '127.0.0.1 localhost\\n127.0.1.1 %s\\n::1 localhost ip6-localhost\\n' "$name" \\
  > $R/etc/hosts
[ -L $R/etc/resolv.conf ] || echo "nameserver 10.0.2.3" > $R/etc/resolv.conf
# written under the init's private umask: everyone reads them (apt resolves as _apt)
chmod 644 $R/etc/hostname $R/etc/hosts $R/etc/boxui/boot-id
[ -L $R/etc/resolv.conf ] || chmod 644 $R/etc/resolv.conf
hostname "$name"
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 || fail no-eth0
ip link set eth0 up
ip route add default via 10.0.2.2
[ -x /{DEBIAN_MOUNT_SCRIPT} ] && /{DEBIAN_MOUNT_SCRIPT} $R
mount --move /dev $R/dev
mount --move /proc $R/proc
mount --move /sys $R/sys
exec switch_root $R /sbin/init
"""

# sshd listening on 22 (v4 or v6), then the marker the host waits for, with this boot's id;
# shell builtins only (a fork and exec of cat and awk every 20 ms took the one vCPU from
# sshd under TCG: 7 s from sshd up to the marker)
_READY = f"""#!/bin/sh
listening() {{
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    while read -r _ local _ state _; do
      case "$local $state" in *:0016\\ 0A) return 0 ;; esac
    done < "$f"
  done
  return 1
}}
i=0
while ! listening; do
  i=$((i + 1))
  if [ "$i" -gt 3000 ]; then
    echo "{FAILED_MARKER} sshd-not-listening" > /dev/console
    exit 1
  fi
  sleep 0.02
done
read -r boot_id < /etc/boxui/boot-id
echo "{READY_MARKER} $boot_id" > /dev/console
exec systemctl start --no-block default.target
"""

# Both start as soon as systemd runs instead of after sysinit.target: sshd needs none of
# it (the network is up from the initramfs, /run is mounted by PID 1 itself), and under
# TCG sysinit (udev's coldplug above all) took over half of the boot to ready.
# `-r`: each connection is served by a fork of the listener, not a fresh exec of sshd.
# Under TCG that exec (the dynamic loader, libcrypto's relocations, sshd's start, all code
# the emulator must translate anew) was the wait between the ready marker and the first
# SSH banner, and in a restored clone, whose QEMU starts with no translated code, it was
# nearly all of its restore to ready (20 s of 21 s at load 12). What re-exec buys, fresh
# address-space randomisation per connection, matters little on a guest reachable only
# through 127.0.0.1; OpenSSL and glibc reseed their generators in a forked child.
# No journal for sshd and the ready unit: a service whose output goes to the journal is
# ordered after journald's socket, which made systemd load journald, udevd and their
# dependencies before starting sshd (with `boxui-boot.target`, nothing else needs them
# that early). sshd logs through syslog (journald's /dev/log once it runs); what either
# writes to stderr (a failure to start) goes to the console, the machine's console log.
_SSH_EARLY = """[Unit]
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=
ExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS
StandardOutput=null
StandardError=tty
"""

# The ready unit starts default.target after the marker (`_READY`), with --no-block: the
# rest of the boot then runs while the host connects, as DEFERRED_UNITS did (trim.py).
_BOOT_TARGET_UNIT = """[Unit]
Description=boxui: SSH ready (the rest of the boot follows)
Wants=ssh.service boxui-ready.service
"""

_READY_UNIT = """[Unit]
Description=boxui: tell the host that SSH is ready
DefaultDependencies=no
After=ssh.service
Wants=ssh.service

[Service]
Type=oneshot
ExecStart=/etc/boxui/ready
StandardOutput=null
StandardError=tty
"""


def openssh_host_key(keys: MachineKeys) -> bytes:
    """The machine's host key (kept in dropbear's format) as OpenSSH's sshd reads it:
    the same key, so known_hosts entries and fingerprints do not change."""
    blob = keys.host_key.read_bytes()
    offset = 4 + int.from_bytes(blob[:4], "big")  # skip the string "ssh-ed25519"
    seed = blob[offset + 4: offset + 36]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def image_modules(rootfs: Path, kernel_version: str,
                  wanted: tuple[tuple[str, str], ...] = DISK_MODULES) -> dict[str, bytes]:
    """`wanted` modules read out of the image with `debugfs` (no mount), decompressed."""
    debugfs = require_tool("debugfs")
    found: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="boxui-mods-") as tmp:
        commands = []
        for name, relative in wanted:
            for suffix in ("", ".xz"):
                source = f"/usr/lib/modules/{kernel_version}/kernel/{relative}{suffix}"
                commands.append(f'dump "{source}" "{tmp}/{name}.ko{suffix}"\n')
        subprocess.run([debugfs, "-f", "-", str(rootfs)], input="".join(commands),
                       capture_output=True, text=True, timeout=60, check=False)
        for name, _ in wanted:
            plain, packed = Path(tmp, f"{name}.ko"), Path(tmp, f"{name}.ko.xz")
            if packed.is_file() and packed.stat().st_size:
                found[name] = lzma.decompress(packed.read_bytes())
            elif plain.is_file() and plain.stat().st_size:
                found[name] = plain.read_bytes()
            else:
                raise GuestImageError(f"image {rootfs.parent.name}: kernel module {name} "
                                      f"for {kernel_version} not found in its /lib/modules")
    return found


def debian_seed_archive(keys: MachineKeys, modules: dict[str, bytes],
                        extra: list[Entry] | None = None) -> bytes:
    """`/init`, the disk modules and this machine's secrets, as one newc archive;
    `extra`: its shared folders' modules and mount script (`/boxui/mounts`)."""
    directory, regular = stat.S_IFDIR, stat.S_IFREG
    entries = [Entry("init", regular | 0o755, _INIT.encode()),
               Entry(GUEST_MODULE_DIR, directory | 0o755)]
    entries += [Entry(f"{GUEST_MODULE_DIR}/{name}.ko", regular | 0o644, blob)
                for name, blob in modules.items()]
    entries += [
        Entry(_SEED, directory | 0o700),
        Entry(f"{_SEED}/ssh_host_ed25519_key", regular | 0o600, openssh_host_key(keys)),
        Entry(f"{_SEED}/ssh_host_ed25519_key.pub", regular | 0o644,
              keys.host_public.read_bytes()),
        Entry(f"{_SEED}/authorized_keys", regular | 0o600, keys.client_public.read_bytes()),
        Entry(f"{_SEED}/random-seed", regular | 0o600, os.urandom(512)),
        Entry(f"{_SEED}/ready", regular | 0o755, _READY.encode()),
        Entry(f"{_SEED}/boxui-ready.service", regular | 0o644, _READY_UNIT.encode()),
        Entry(f"{_SEED}/{BOOT_TARGET}", regular | 0o644, _BOOT_TARGET_UNIT.encode()),
        Entry(f"{_SEED}/ssh-early.conf", regular | 0o644, _SSH_EARLY.encode()),
    ]
    return write_archive(entries + (extra or []))


#: the default guest's SSH server, which a Debian machine (OpenSSH in its image) never runs
_DROPBEAR = ("usr/sbin/dropbear", "etc/dropbear")
_BUSYBOX = "bin/busybox"


def debian_base_archive(base_initrd: Path) -> bytes:
    """The default initrd as a plain newc archive less dropbear (see the module
    docstring); made once per initrd file and process."""
    st = base_initrd.stat()
    return _base_archive(str(base_initrd), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _base_archive(path: str, _mtime_ns: int, _size: int) -> bytes:
    blob = Path(path).read_bytes()
    try:
        entries = read_archive(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)
    except (OSError, EOFError, ValueError) as exc:
        raise GuestImageError(f"default initrd {path} cannot be read: {exc}") from None
    files = {e.name: e for e in entries}
    if _BUSYBOX not in files:
        raise GuestImageError(f"default initrd {path} has no {_BUSYBOX}")
    # a regular file wins over a symlink of the same name (lib64/ld-linux...)
    libraries = {_soname(e.name): e for e in sorted(
        entries, key=lambda e: stat.S_ISREG(e.mode)) if _soname(e.name)}
    wanted: set[str] = set()
    todo = needed_sonames(files[_BUSYBOX].data, f"{path}: {_BUSYBOX}")
    while todo:  # busybox's NEEDED closure, as far as the archive holds it
        soname = todo.pop()
        if soname not in wanted and soname in libraries:
            wanted.add(soname)
            if stat.S_ISREG(libraries[soname].mode):  # not a symlink's target path
                todo += needed_sonames(libraries[soname].data, f"{path}: {soname}")
    kept = [e for e in entries if not e.name.startswith(_DROPBEAR)
            and (not _soname(e.name) or _soname(e.name) in wanted)]
    return write_archive(kept)


def _soname(name: str) -> str:
    """A shared library's file name ("" for anything else; symlinks to one included)."""
    base = name.rsplit("/", 1)[-1]
    return base if name.startswith(("lib/", "lib64/")) and ".so" in base else ""


def write_debian_initrd(base_initrd: Path, machine_dir: Path, keys: MachineKeys,
                        modules: dict[str, bytes], extra: list[Entry] | None = None) -> Path:
    """`machine_dir/initrd-debian.img`: the default initrd plus the archive above,
    rewritten at every cold boot (it carries a fresh RNG seed) and released once the
    guest is ready (`machine_seed.release_boot_initrd`)."""
    target = machine_dir / DEBIAN_INITRD_FILE
    data = concatenate_initrd(debian_base_archive(base_initrd),
                              debian_seed_archive(keys, modules, extra))
    atomic_write_bytes(target, data, 0o600)
    return target
