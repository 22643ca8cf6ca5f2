"""Making a freshly bootstrapped Debian root boot fast, to SSH, as a boxui machine.

Why each part (a build host on a 1-vCPU microVM, often under TCG, where every process
systemd starts before sshd competes with it for that one CPU; found with
`systemd-analyze blame/critical-chain` and the journal in the guest):
- sshd starts first: its unit (`/etc/systemd/system/ssh.service`, which overrides
  Debian's) waits for neither sysinit.target nor network.target, and skips the
  `sshd -t` pre-check, a second full sshd start. The network is up before systemd runs
  (boxui's initramfs configures eth0 for QEMU's user network), so sshd needs nothing else.
- masked, periodic work that competes with the user's builds right after boot:
  apt-daily*, man-db, dpkg-db-backup, tmpfiles-clean timers;
- masked, maintenance of a filesystem that lives in a qcow2 file on the host: e2scrub_*,
  fstrim;
- masked, what a console that is a file cannot use: getty@tty1, serial-getty@ttyS0,
  getty-static (gettys on tty2-6 when there is no logind);
- masked, coldplug: udev's trigger and settle walk every device of a machine whose
  devices are all there (and whose modules are loaded) before systemd starts; udevd
  itself stays for whatever a package's scripts ask of it;
- masked, systemd-networkd (and its wait-online): the initramfs configured eth0
  statically, and networkd found nothing to do but fail and restart;
- masked, logind: it needs D-Bus, which the image does not have; the ACPI power button
  (`boxui stop`) is handled by `boxui-powerkey.service`, which waits for the button's
  first event and powers off;
- masked, kernel interfaces and modules nobody here uses: debugfs/tracefs mounts,
  hugepages, configfs, fusectl, pstore, drm/dm_mod/efi_pstore/configfs module loads,
  utmp, random-seed (boxui seeds the kernel's RNG from the initramfs at every boot);
- masked generators (`/etc/systemd/system-generators/NAME` -> /dev/null): each is a
  process that runs before systemd starts anything: GPT auto-mounts, crypt/integrity/
  verity setup, hibernation resume, system updates, getty, rc.local, SysV init scripts
  (every service of the image has a unit of its own), and the kernel command line's
  `systemd.mask=`/`systemd.run=` (no one passes those to a boxui machine); under TCG,
  systemd took 15-20 s (guest time, loaded host) from its start to queuing any job.
- deferred (`DEFERRED_UNITS`): housekeeping sshd does not need (udevd, tmpfiles,
  sysusers, sysctl, modules-load, the journal's flush to disk, ...) starts once SSH
  answers, so it no longer competes with sshd for the CPU while sshd starts. boxui's
  initramfs now boots systemd to `boxui-boot.target` (sshd and the ready unit alone) and
  starts `default.target` once ready (`backend.guest.debian_initrd`), so none of them is
  even queued before then; the ordering stays for a boot to any other target;
Kept: journald (the journal), udevd, tmpfiles, sysusers, apt, OpenSSH with boxui's keys.

SSH host keys are removed: every machine gets its own from boxui at boot. A shared key
baked into the image would make every machine of an image look like the same host.

All of it is data (`TRIM_DATA` below); its digest is part of an image's cache key, so a
changed trim builds a new image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer", "apt-daily.service", "apt-daily-upgrade.timer",
    "apt-daily-upgrade.service", "man-db.timer", "man-db.service",
    "dpkg-db-backup.timer", "dpkg-db-backup.service", "e2scrub_all.timer",
    "e2scrub_all.service", "e2scrub_reap.service", "fstrim.timer", "fstrim.service",
    "systemd-tmpfiles-clean.timer",
    "getty@tty1.service", "serial-getty@ttyS0.service", "systemd-pstore.service",
    "remote-fs.target", "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-networkd.service", "systemd-networkd.socket",
    "systemd-networkd-wait-online.service", "systemd-logind.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
    "modprobe@drm.service", "modprobe@dm_mod.service", "modprobe@efi_pstore.service",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
    "systemd-random-seed.service", "getty-static.service", "modprobe@configfs.service",
    "sys-kernel-config.mount", "sys-fs-fuse-connections.mount",
)
#: started once SSH answers (`boxui-ready.service`, from the initramfs), not before: sshd
#: needs none of them, and each took the one vCPU from it while it started (measured
#: under TCG: sshd 16 s to start beside udevd 20 s, tmpfiles 13 s, sysusers 10 s, ...)
DEFERRED_UNITS: tuple[str, ...] = (
    "systemd-udevd.service", "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service", "systemd-sysusers.service",
    "systemd-sysctl.service", "systemd-modules-load.service",
    "systemd-journal-flush.service", "systemd-remount-fs.service",
    "kmod-static-nodes.service", "modprobe@loop.service", "modprobe@fuse.service",
    "dev-mqueue.mount",
)
DEFER_DROPIN = """\
# written by boxui: after SSH answers (see backend/images/trim.py)
[Unit]
After=boxui-ready.service
"""
MASKED_GENERATORS: tuple[str, ...] = (
    "systemd-gpt-auto-generator", "systemd-cryptsetup-generator",
    "systemd-integritysetup-generator", "systemd-veritysetup-generator",
    "systemd-hibernate-resume-generator", "systemd-system-update-generator",
    "systemd-getty-generator", "systemd-rc-local-generator", "systemd-sysv-generator",
    "systemd-debug-generator", "systemd-run-generator",
)
SSH_UNIT = """\
# written by boxui: Debian's unit, started first (see backend/images/trim.py)
[Unit]
Description=OpenBSD Secure Shell server
Documentation=man:sshd(8) man:sshd_config(5)
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
ExecReload=/usr/sbin/sshd -t
ExecReload=/bin/kill -HUP $MAINPID
KillMode=process
Restart=on-failure
RestartPreventExitStatus=255
Type=notify
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""
POWERKEY_SCRIPT = "/usr/local/lib/boxui/powerkey"
# The button's first event (a key press) is enough: read one (an evdev read takes whole
# 24-byte events), then power off.
POWERKEY = """\
#!/bin/sh
# written by boxui: the ACPI power button powers off (there is no logind)
modprobe evdev  # its event device; udev's coldplug, which would load it, is masked
for d in /sys/class/input/input*; do
  [ "$(cat "$d/name")" = "Power Button" ] || continue
  for e in "$d"/event*; do
    dd if="/dev/input/${e##*/}" of=/dev/null bs=24 count=1 status=none \\
      && exec systemctl poweroff
  done
done
echo "boxui: no power button found"
exit 1
"""
POWERKEY_UNIT = f"""\
[Unit]
Description=boxui: power off on the ACPI power button
DefaultDependencies=no
After=ssh.service

[Service]
ExecStart={POWERKEY_SCRIPT}

[Install]
WantedBy=multi-user.target
"""
RESOLV_CONF = "# written by boxui: QEMU's user-network resolver\nnameserver 10.0.2.3\n"


def trim_digest() -> str:
    """What the trim does, as a digest for the image's cache key."""
    data = [MASKED_UNITS, DEFERRED_UNITS, DEFER_DROPIN, MASKED_GENERATORS, SSH_UNIT,
            POWERKEY, POWERKEY_UNIT, RESOLV_CONF]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _replace_link(link: Path, target: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def mask_units(root: Path, units: tuple[str, ...] = MASKED_UNITS) -> list[str]:
    """Mask each unit (a link to /dev/null, as `systemctl mask` makes) and drop the
    links that enabled it; returns the units that were there to mask."""
    system = _inside(root, "/etc/systemd/system")
    present = []
    for unit in units:
        for wants in system.glob("*.wants"):
            with contextlib.suppress(FileNotFoundError):
                (wants / unit).unlink()
        for lib in ("usr/lib/systemd/system", "lib/systemd/system"):
            if (root / lib / unit).exists() or (root / lib / unit).is_symlink():
                present.append(unit)
                break
        _replace_link(system / unit, "/dev/null")
    return present


def mask_generators(root: Path) -> None:
    for name in MASKED_GENERATORS:
        _replace_link(_inside(root, f"/etc/systemd/system-generators/{name}"), "/dev/null")


def defer_units(root: Path) -> None:
    system = _inside(root, "/etc/systemd/system")
    for unit in DEFERRED_UNITS:
        dropins = system / f"{unit}.d"
        dropins.mkdir(parents=True, exist_ok=True)
        (dropins / "boxui-after-ready.conf").write_text(DEFER_DROPIN)


def install_units(root: Path) -> None:
    """sshd first, the power button, and a resolver (no networkd, no resolved)."""
    system = _inside(root, "/etc/systemd/system")
    system.mkdir(parents=True, exist_ok=True)
    (system / "ssh.service").write_text(SSH_UNIT)
    _replace_link(system / "sshd.service", "/etc/systemd/system/ssh.service")
    _replace_link(system / "multi-user.target.wants" / "ssh.service",
                  "/etc/systemd/system/ssh.service")
    script = _inside(root, POWERKEY_SCRIPT)
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(POWERKEY)
    script.chmod(0o755)
    (system / "boxui-powerkey.service").write_text(POWERKEY_UNIT)
    _replace_link(system / "multi-user.target.wants" / "boxui-powerkey.service",
                  "/etc/systemd/system/boxui-powerkey.service")
    resolv = _inside(root, "/etc/resolv.conf")
    with contextlib.suppress(FileNotFoundError):
        resolv.unlink()
    resolv.write_text(RESOLV_CONF)
    resolv.chmod(0o644)  # read by every user (apt resolves as _apt)


def remove_host_keys(root: Path) -> list[str]:
    removed = []
    for key in sorted(_inside(root, "/etc/ssh").glob("ssh_host_*")):
        key.unlink()
        removed.append(key.name)
    return removed


def trim(root: Path) -> None:
    mask_units(root)
    mask_generators(root)
    defer_units(root)
    install_units(root)
    remove_host_keys(root)
    # a machine's identity: regenerated by systemd on first boot when empty
    machine_id = _inside(root, "/etc/machine-id")
    if machine_id.exists():
        machine_id.write_text("")
