"""The QEMU argv for one microVM, built as a list by a pure function.

Why a list: every value (paths, names) stays one argument, so nothing is ever
interpreted by a shell. QEMU's own option syntax still splits on ',', so commas inside
values that go into `key=value` option strings are doubled (QEMU's escape), and a name
is restricted to hostname characters because it ends up on the kernel command line.

Choices worth knowing:
- `-M microvm,acpi=on` (the default, made explicit): ACPI is how Debian's kernel finds
  the virtio-mmio devices at all, and how QMP `system_powerdown` reaches the guest as a
  power-button press (see `image_builder`).
- `-no-reboot`: a guest reboot or a kernel panic (`panic=-1` reboots at once) makes
  QEMU exit instead of looping, so a supervisor sees the death.
- Devices get fixed ids, so QOM paths are stable: the balloon is at
  `BALLOON_QOM_PATH` (`/machine/peripheral/balloon0`), where `guest-stats` is read
  after setting `guest-stats-polling-interval`.
- Snapshot builds and restores keep guest RAM in a file (`memory-backend-file`, the
  machine's `memory-backend`): shared for the build, so the file is the snapshot's
  memory; private (copy-on-write) for a restore, so a restored guest starts without
  its memory being read in, and never writes to the template's file.
- A restore starts with `-incoming defer`: migration capabilities (which have no
  command-line form in QEMU 7.2) are set over QMP before the load is started there.
- Shared folders are `-fsdev local,security_model=none` + `virtio-9p-device` (the mmio
  transport microvm has), tagged `boxui0`, `boxui1`, ... QEMU runs as the user who runs
  boxui, so every file the guest creates is that user's on the host; `none` (as Lima
  uses) keeps the modes the guest sets and needs nothing of the host filesystem, where
  `mapped-xattr` would write the guest's owner and mode into xattrs (not on every
  filesystem) and leave host files 0600. `readonly=on` makes `:ro` QEMU's to enforce.
- `-name boxui-NAME,process=boxui-NAME`: the pid's cmdline names the machine (the
  thread name, limited by Linux to 15 bytes, is only a hint).
- `-accel tcg,tb-size=N` (`tb_size_mib`): QEMU 7.2 gives TCG's translation buffer 1 GiB
  of address space, and every page of it the guest's code has filled stays resident. A
  capped buffer is flushed and refilled when full: too small and that happens during
  boot and SSH logins (see TCG_TB_SIZE_MIB). Under KVM there is no buffer.
  Neither this nor THP (`host_memory`) changes the guest's RAM layout or device state,
  so snapshots taken before them restore as before.
- Free page reporting (`free_page_reporting`): the balloon tells QEMU which guest pages
  the guest has freed, and QEMU gives them back to the host (MADV_DONTNEED). A cold boot
  frees its initrd's copy, the kernel's __init sections and what the boot's processes
  used, all touched once and never again: ~5.5 MiB of an idle guest's RAM. The guest
  reports single pages (its /init sets `page_reporting_order` to 0, `guest_files`): the
  kernel's default reports only 4 MiB blocks, which those pages never form. Only under
  TCG: under KVM guest RAM is in huge pages (`host_memory`), which 4 KiB reports would
  split. Only for anonymous guest RAM: QEMU 7.2 discards a file-backed range by
  punching a hole in the file even when the mapping is private, which for a restore is
  the template's RAM file its clones share; and a template build's snapshot then keeps
  the balloon as every restore declares it. The kernel command line is not changed, so
  templates built before restore as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from backend.guest.errors import GuestImageError
from backend.guest.tools import require_tool
from backend.state.accelerator import Accel
from backend.state.mount_spec import MountSpec, mount_tag

BALLOON_ID = "balloon0"
AGENT_PORT_NAME = "boxui.agent"  # the guest finds its RNG agent's port by this name
BALLOON_QOM_PATH = f"/machine/peripheral/{BALLOON_ID}"
QEMU_BINARY = "qemu-system-x86_64"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: the accelerators QEMU itself runs under (not "demo", which only stand-ins take)
QEMU_ACCELS: tuple[Accel, ...] = ("kvm", "tcg")
_BOOT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: TCG's translation buffer, MiB, for Debian's kernel (OS images). A boot fills ~52 MiB
#: of it and three SSH logins ~67: at 64 a boot never flushes it (QEMU CPU to ready as
#: with the default), at 32 it flushed twice and the boot took 20-30 % more CPU, at 16 a
#: loaded host's boot never got to answer SSH. Its point is the ceiling: uncapped, a busy
#: guest's buffer grows towards 1 GiB resident, and nothing gives those pages back.
TCG_TB_SIZE_MIB = 64
#: The same for boxui's own kernel (the default guest): a sixteenth of guest RAM, at
#: least this. Its boot fills ~29 MiB and each SSH login adds 3-6 more (ASLR puts
#: dropbear and libc at new addresses, which TCG translates afresh), so a buffer under
#: that is full, and resident, by the time a guest idles: the cap is what an idle guest
#: costs. At 16 (a 256 MiB guest, the default) a boot flushes it twice and takes 5 %
#: longer than at 32 (0.65 s to ready against 0.61, eight paired boots on an idle host,
#: bench/memory.py), logins as fast; at 18-20 it flushes once and costs the same; at 12
#: four flushes and 0.2 s more. 16 is what brings an idle default guest under 64 MiB. A
#: bigger guest is asked for bigger work, whose code may not fit in 16 MiB and would be
#: translated again after every flush: its buffer grows with its RAM, up to Debian's 64
#: from 1 GiB.
SMALL_KERNEL_TB_SIZE_MIB = 16
_SMALL_KERNEL_TB_SHARE = 16  # guest RAM / buffer


@dataclass(frozen=True)
class QemuConfig:
    """Everything that varies between two launches of a microVM."""

    name: str
    vcpus: int
    memory_mib: int
    kernel: Path
    initrd: Path
    accel: Accel
    ssh_port: int
    console_log: Path
    qmp_socket: Path
    pidfile: Path
    boot_id: str
    append: str = ""  # extra kernel parameters, after the ones boxui needs
    #: wait for a snapshot to restore (`-incoming defer`); QMP then names its descriptor
    incoming: bool = False
    daemonize: bool = True
    #: the user's own disk image, attached as the first virtio block device (/dev/vda)
    disk_image: Path | None = None
    tsc_khz: int | None = None  # host TSC kHz; TCG boots hang without it (see accel.py)
    #: extra (host port, guest port) TCP forwards on 127.0.0.1 (a service's ports)
    port_forwards: tuple[tuple[int, int], ...] = ()
    #: the same for UDP
    udp_forwards: tuple[tuple[int, int], ...] = ()
    #: the whole kernel command line, used verbatim (a snapshot restore repeats its own)
    kernel_cmdline: str | None = None
    #: host end (unix socket) of the virtio-serial port a snapshot's RNG agent listens on
    agent_socket: Path | None = None
    #: guest RAM backed by this file, written through when `ram_file_shared`, else
    #: mapped copy-on-write (see `backend.drivers.base.GuestRamFile`)
    ram_file: Path | None = None
    ram_file_shared: bool = False
    #: host folders shared through virtio-9p, tagged by their index (`mount_tag`)
    mounts: tuple[MountSpec, ...] = ()


def _opt(value: Path | str) -> str:
    """Escape a value for a QEMU `key=value,...` option string."""
    return str(value).replace(",", ",,")


def kernel_append(config: QemuConfig) -> str:
    """The kernel command line: serial console, quiet, reboot on panic, identity."""
    if config.kernel_cmdline is not None:
        return config.kernel_cmdline
    return kernel_cmdline_for(config.name, config.boot_id, config.accel, config.tsc_khz,
                              config.append)


def kernel_cmdline_for(name: str, boot_id: str, accel: Accel, tsc_khz: int | None,
                       append: str) -> str:
    parts = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        f"boxui.name={name}",
        f"boxui.boot_id={boot_id}",
    ]
    if accel == "tcg" and tsc_khz:
        parts += [f"tsc_early_khz={tsc_khz}", "tsc=reliable"]
    if append:
        parts.append(append)
    return " ".join(parts)


def validate(config: QemuConfig) -> None:
    """Reject values that would change the meaning of the command line."""
    if not NAME_PATTERN.fullmatch(config.name):
        raise GuestImageError(f"invalid machine name {config.name!r} for a QEMU command line")
    if not _BOOT_ID_PATTERN.fullmatch(config.boot_id):
        raise GuestImageError(f"invalid boot id {config.boot_id!r}")
    if config.accel not in QEMU_ACCELS:
        raise GuestImageError(f"QEMU cannot run a guest under accel {config.accel!r}")
    if not 1 <= config.vcpus <= 64:
        raise GuestImageError(f"vcpus must be 1-64, not {config.vcpus}")
    if not 64 <= config.memory_mib <= 1 << 20:
        raise GuestImageError(f"memory must be 64 MiB or more, not {config.memory_mib}")
    if config.tsc_khz is not None and not 1000 <= config.tsc_khz <= 100_000_000:
        raise GuestImageError(f"implausible TSC frequency {config.tsc_khz} kHz")
    if not 1 <= config.ssh_port <= 65535:
        raise GuestImageError(f"invalid ssh port {config.ssh_port}")
    for host, guest in config.port_forwards + config.udp_forwards:
        if not (1 <= host <= 65535 and 1 <= guest <= 65535):
            raise GuestImageError(f"invalid port forward {host}:{guest}")
    if any(ch in kernel_append(config) for ch in "\n\r\0"):
        raise GuestImageError("kernel append must be one line")


def tb_size_mib(kernel: Path, memory_mib: int) -> int:
    """TCG's buffer for a guest of `memory_mib` booting `kernel` (above)."""
    # here, not at the top: `doctor` imports this module for QEMU_BINARY alone, and the
    # image builder would add pydantic and the rest of image building to its start-up
    from backend.guest.image_builder import GUEST_KERNEL_FILE

    if kernel.name != GUEST_KERNEL_FILE:
        return TCG_TB_SIZE_MIB
    share = memory_mib // _SMALL_KERNEL_TB_SHARE
    return min(max(share, SMALL_KERNEL_TB_SIZE_MIB), TCG_TB_SIZE_MIB)


def free_page_reporting(config: QemuConfig) -> bool:
    """The balloon reports freed guest pages: under TCG, for anonymous guest RAM (above)."""
    return config.accel == "tcg" and config.ram_file is None and not config.incoming


def balloon_device(config: QemuConfig) -> str:
    reporting = ",free-page-reporting=on" if free_page_reporting(config) else ""
    return f"virtio-balloon-device,id={BALLOON_ID}{reporting}"


def accel_option(accel: Accel, kernel: Path, memory_mib: int) -> str:
    """`-accel`'s value: TCG with its translation buffer capped, KVM as it is."""
    return f"tcg,tb-size={tb_size_mib(kernel, memory_mib)}" if accel == "tcg" else accel


def build_argv(config: QemuConfig, qemu_binary: str = QEMU_BINARY) -> list[str]:
    """The full argv (binary first) that launches `config` as a microVM."""
    validate(config)
    label = f"boxui-{config.name}"
    argv = [
        qemu_binary,
        "-name", f"{label},process={label}",
        "-M", "microvm,acpi=on" + (",memory-backend=ram0" if config.ram_file else ""),
        "-accel", accel_option(config.accel, config.kernel, config.memory_mib),
        *(["-cpu", "host"] if config.accel == "kvm" else []),  # TCG: QEMU's default model
        "-m", str(config.memory_mib),
        "-smp", str(config.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        # append: a rotation truncates the file in place (supervision/console_rotation.py)
        "-chardev", f"file,id=con0,path={_opt(config.console_log)},append=on",
        "-serial", "chardev:con0",
        "-kernel", str(config.kernel),
        "-initrd", str(config.initrd),
        "-append", kernel_append(config),
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{config.ssh_port}-:22"
                   + "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
                             for host, guest in config.port_forwards)
                   + "".join(f",hostfwd=udp:127.0.0.1:{host}-:{guest}"
                             for host, guest in config.udp_forwards),
        "-device", "virtio-net-device,netdev=n0,id=net0",
        "-device", balloon_device(config),
        "-device", "virtio-rng-device,id=rng0",
        "-qmp", f"unix:{_opt(config.qmp_socket)},server=on,wait=off",
        "-pidfile", str(config.pidfile),
    ]  # fmt: skip
    if config.ram_file is not None:
        share = "on" if config.ram_file_shared else "off"
        argv += ["-object", f"memory-backend-file,id=ram0,size={config.memory_mib}M,"
                            f"mem-path={_opt(config.ram_file)},share={share}"]
    if config.agent_socket is not None:
        argv += [
            "-chardev", f"socket,id=agent0,path={_opt(config.agent_socket)},server=on,wait=off",
            "-device", "virtio-serial-device,id=ser0",
            "-device", f"virtserialport,chardev=agent0,nr=1,name={AGENT_PORT_NAME},id=agent",
        ]  # fmt: skip
    if config.disk_image is not None:
        image_format = "qcow2" if config.disk_image.suffix == ".qcow2" else "raw"
        # cache=writeback: the host page cache absorbs writes, and virtio-blk then tells
        # the guest it has a volatile cache, so the guest's flushes (fsync, sync, journal
        # commits) become fdatasync here: what the guest synced survives a SIGKILL of
        # QEMU and a host crash. (cache=unsafe would drop those flushes.)
        argv += [
            "-drive", f"id=disk0,if=none,format={image_format},cache=writeback,"
                      f"file={_opt(config.disk_image)}",
            "-device", "virtio-blk-device,drive=disk0",
        ]  # fmt: skip
    argv += _share_args(config.mounts)
    if config.incoming:
        # MIGRATION events from the start, so the end of the load is told, not polled
        argv += ["-global", "migration.x-events=on", "-incoming", "defer"]
    if config.daemonize:
        argv.append("-daemonize")
    return argv


def _share_args(mounts: tuple[MountSpec, ...]) -> list[str]:
    argv: list[str] = []
    for index, mount in enumerate(mounts):
        tag, readonly = mount_tag(index), ",readonly=on" if mount.readonly else ""
        argv += [
            "-fsdev", f"local,id=fs{index},path={_opt(mount.host)},security_model=none"
                      + readonly,
            "-device", f"virtio-9p-device,fsdev=fs{index},mount_tag={tag},id={tag}",
        ]  # fmt: skip
    return argv


def find_qemu() -> str:
    """Absolute path of qemu-system-x86_64, or a GuestImageError saying what to install."""
    return require_tool(QEMU_BINARY)
