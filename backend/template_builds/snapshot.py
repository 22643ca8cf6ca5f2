"""Producing one variant's artifacts: boot it, wait for ready, save its memory.

What a snapshot revision's `<role>/` dir holds: the kernel (a hard link to the image's,
or a copy), the initrd the variant booted (base image plus its seed archive: SSH host
key, client key, RNG seed), those keys, the build's console log, `ram.bin` (the guest's
RAM: the build VM runs with its memory in that file, so saving never copies it) and
`snapshot.bin` (device state). Once the revision is published `ram.bin` is never
written again: restored machines map it copy-on-write, and a change to it would show
through in every one of them.
A variant of an OS image (`image = "debian-12"`) boots like a disk machine (the
Debian initrd, a qcow2 overlay on the image: `disk.qcow2`); the snapshot saves the
guest's memory with that disk as it was at that moment, and the disk is then frozen
(mode 0444, never written again): each clone boots on an overlay of its own on it, so
the filesystem under the restored page cache is exactly the one the guest saw.
Every machine restored from it shares that host key and the RNG state of that one boot;
the agent started just before saving (`restore_agent`) gives each restored guest
fresh kernel RNG state and the host's time; the host key stays shared.

The build VM runs with its QMP socket in a private temp dir (a unix socket path must be
short) and is killed after saving, whatever happens; it is never a machine of boxui's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.drivers.base import (
    GuestRamFile,
    HypervisorDriver,
    LaunchSpec,
    SnapshotSaved,
    VmHandle,
)
from backend.drivers.qemu.accel import AccelChoice
from backend.errors import BoxuiError
from backend.guest.image_builder import GuestImage
from backend.guest.machine_seed import (
    MachineKeys,
    create_machine_keys,
    load_machine_keys,
    write_machine_initrd,
)
from backend.guest.restore_agent_elf import AGENT_PROTOCOL
from backend.state.events import now_utc
from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.ports import pick_free_port, start_on_free_port
from backend.supervision.restore_agent import AGENT_SOCKET, stage_agent
from backend.templates.errors import TemplateError
from backend.templates.publish import Producer, VariantJob
from backend.templates.revision import SnapshotInfo, VariantArtifacts
from backend.templates.revision_store import kill_build_vms

SNAPSHOT_FILE = "snapshot.bin"
RAM_FILE = "ram.bin"
BUILD_BOOT_TIMEOUT = 180.0
#: a Debian variant boots systemd from its disk: as long as a disk machine may take
OS_BUILD_BOOT_TIMEOUT = 600.0


def _artifacts(job: VariantJob, **files: object) -> VariantArtifacts:
    v = job.variant
    return VariantArtifacts.model_validate({
        "name": job.name, "role": v.role, "profile": job.profile, "vcpus": v.vcpus,
        "memory_mib": v.memory_mib, "data_disk_mib": v.data_disk_mib,
        "boot_args": v.boot_args, "cache_key": job.key, **files,
    })


def image_producer(os_image: str | None = None) -> Producer:
    """An image template: nothing to produce beyond the record; machines cold-boot
    (from a disk of their own when the template names an OS image)."""

    async def produce(job: VariantJob) -> VariantArtifacts:
        return _artifacts(job, os_image=os_image)

    return produce


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@dataclass(frozen=True)
class VariantBoot:
    kernel: Path
    initrd: Path
    keys: MachineKeys
    append: str = ""
    disk: Path | None = None


async def _default_boot(image: GuestImage, job: VariantJob) -> VariantBoot:
    kernel = job.directory / image.kernel.name
    await asyncio.to_thread(_link_or_copy, image.kernel, kernel)
    keys = await asyncio.to_thread(create_machine_keys, job.directory)
    initrd = await asyncio.to_thread(write_machine_initrd, image, job.directory, keys)
    return VariantBoot(kernel, initrd, keys, job.variant.boot_args)


async def _disk_boot(images_dir: Path, os_image: str, job: VariantJob) -> VariantBoot:
    """Boot files as a disk machine of `os_image` gets them, made in the variant's dir."""
    variant = job.variant
    spec = MachineSpec(name=job.name, vcpus=variant.vcpus, memory_mib=variant.memory_mib,
                       cmdline=variant.boot_args, image=os_image)
    try:
        files = await DefaultBootFiles(images_dir).prepare(spec, job.directory)
    except BoxuiError as exc:
        raise TemplateError(f"building {job.name}: {exc}") from None
    kernel = job.directory / files.kernel.name
    await asyncio.to_thread(_link_or_copy, files.kernel, kernel)
    keys = await asyncio.to_thread(load_machine_keys, job.directory)
    return VariantBoot(kernel, files.initrd, keys, files.append, files.disk_image)


def snapshot_producer(driver: HypervisorDriver, image: GuestImage, accel: AccelChoice,
                      boot_timeout: float = BUILD_BOOT_TIMEOUT,
                      avoid_ports: Callable[[], set[int]] = set,
                      os_image: tuple[Path, str] | None = None) -> Producer:
    """`avoid_ports`: the ports a supervisor's machines hold (or are about to bind).
    `os_image`: (images dir, name) for variants that boot an OS image from a disk."""
    if os_image is not None:
        boot_timeout = max(boot_timeout, OS_BUILD_BOOT_TIMEOUT)

    async def produce(job: VariantJob) -> VariantArtifacts:
        directory, variant = job.directory, job.variant
        boot = await (_disk_boot(*os_image, job) if os_image else _default_boot(image, job))
        kernel, initrd, keys = boot.kernel, boot.initrd, boot.keys
        run_dir = Path(tempfile.mkdtemp(prefix="boxui-tpl-"))
        boot_id = secrets.token_hex(6)

        def launch_on(port: int) -> LaunchSpec:
            return LaunchSpec(
                name=job.name, vcpus=variant.vcpus, memory_mib=variant.memory_mib,
                kernel=kernel, initrd=initrd, append=boot.append, disk_image=boot.disk,
                accel=accel.accel, ssh_port=port, boot_id=boot_id,
                machine_dir=directory, run_dir=run_dir,
                console_log=directory / "console.log", tsc_khz=accel.tsc_khz,
                agent_socket=run_dir / AGENT_SOCKET,
                ram_file=GuestRamFile(directory / RAM_FILE, shared=True),
            )

        handle: VmHandle | None = None
        started = time.monotonic()
        try:
            handle = await start_on_free_port(driver, launch_on,
                                              pick_free_port(avoid_ports()),
                                              avoid=avoid_ports)
            await driver.wait_ready(handle, boot_timeout)
            booted = time.monotonic() - started
            await stage_agent(handle.ssh_port, keys, directory)  # saved with the guest
            saved = await driver.save_snapshot(handle, directory / SNAPSHOT_FILE)
        except BoxuiError as exc:
            raise TemplateError(f"building {job.name}: {exc}") from None
        finally:
            if handle is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(_discard(driver, handle))
            else:  # cut short inside `start` (Ctrl-C): a daemonized QEMU may run unknown
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.to_thread(kill_build_vms, directory))
            shutil.rmtree(run_dir, ignore_errors=True)
        info = _snapshot_info(job, accel, boot_id, booted, saved)
        if boot.disk is not None:  # frozen: the memory just saved expects it as it is
            await asyncio.to_thread(os.chmod, boot.disk, 0o444)
        return _artifacts(job, kernel=kernel.name, initrd=initrd.name,
                          snapshot_file=SNAPSHOT_FILE, snapshot=info,
                          ram_file=saved.ram_file.name if saved.ram_file else None,
                          os_image=os_image[1] if os_image else None,
                          disk_file=boot.disk.name if boot.disk else None)

    return produce


def _snapshot_info(job: VariantJob, accel: AccelChoice, boot_id: str, booted: float,
                   saved: SnapshotSaved) -> SnapshotInfo:
    variant = job.variant
    return SnapshotInfo(
        created_at=now_utc(), vmstate_size_bytes=saved.state_bytes,
        ram_file_bytes=saved.ram_file_bytes,
        mem_size_bytes=saved.memory_bytes, boot_args=saved.kernel_cmdline,
        vcpus=variant.vcpus, memory_mib=variant.memory_mib, accel=accel.accel,
        guest_name=job.name, boot_id=boot_id, boot_seconds=round(booted, 3),
        save_seconds=round(saved.seconds, 3), agent_protocol=AGENT_PROTOCOL,
    )


async def _discard(driver: HypervisorDriver, handle: VmHandle) -> None:
    await driver.kill(handle)
    await driver.wait_exit(handle)
