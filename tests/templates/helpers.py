"""Template revisions fabricated on disk, for tests that need no VM."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from backend.drivers.base import DriverCapabilities
from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.drivers.qemu.cmdline import kernel_cmdline_for
from backend.state.accelerator import Accel
from backend.state.state_dir import StateDir
from backend.templates.layout import TemplateDir
from backend.templates.restore_plan import KEY_FILES
from backend.templates.revision import (
    SnapshotInfo,
    TemplateRevision,
    VariantArtifacts,
    write_revision,
)
from backend.templates.revision_store import switch_current
from tests.fake_driver import FakeDriver

REVISION = "0123456789abcdef"
#: the accelerator every fabricated snapshot was taken with
TCG = AccelChoice(accel="tcg", reason="test")
#: what a driver that can save and restore snapshots (as QEMU can) declares
QEMU_LIKE = DriverCapabilities(name="qemu", snapshots=True, graceful_stop=True,
                               accels=("tcg",))


class SnapshotDriver(FakeDriver):
    """The fake driver declaring snapshot support, so that templates restore on it."""

    def capabilities(self) -> DriverCapabilities:
        return QEMU_LIKE


def snapshot_info(vcpus: int = 1, memory_mib: int = 256, accel: Accel = "tcg",
                  tsc_khz: int | None = None, cmdline: str = "") -> SnapshotInfo:
    return SnapshotInfo(
        created_at=datetime(2026, 11, 22, tzinfo=UTC), vmstate_size_bytes=90 << 20,
        mem_size_bytes=memory_mib << 20,
        boot_args=kernel_cmdline_for("web-worker", "b00t", accel, tsc_khz, cmdline),
        vcpus=vcpus, memory_mib=memory_mib, accel=accel, guest_name="web-worker",
        boot_id="b00t")


def host_snapshot_info() -> SnapshotInfo:
    """A snapshot as if taken on this host (its accelerator and TSC rate)."""
    choice = resolve_accel("auto")
    return snapshot_info(accel=choice.accel, tsc_khz=choice.tsc_khz)


def fabricate(dirs: StateDir, template_id: str = "web", role: str = "worker", *,
              snapshot: SnapshotInfo | None = None, revision: str = REVISION,
              vcpus: int = 1, memory_mib: int = 256) -> TemplateRevision:
    """A finished revision with (fake) files, made `current`."""
    tdir = TemplateDir.of(dirs, template_id)
    role_dir = tdir.revision_dir(revision) / role
    role_dir.mkdir(parents=True)
    files = {}
    if snapshot is not None:
        for name in ("snapshot.bin", "vmlinux", "initrd.img", *KEY_FILES):
            (role_dir / name).write_bytes(b"x")
        os.chmod(role_dir / KEY_FILES[0], 0o600)
        files = {"kernel": "vmlinux", "initrd": "initrd.img", "snapshot_file": "snapshot.bin"}
    record = TemplateRevision(
        template_id=template_id, revision=revision,
        kind="snapshot" if snapshot else "image", image_hash="ab" * 32,
        variants={role: VariantArtifacts(
            name=f"{template_id}-{role}", role=role, profile="minimal", vcpus=vcpus,
            memory_mib=memory_mib, data_disk_mib=0, boot_args="", cache_key="cd" * 32,
            snapshot=snapshot, **files)})
    write_revision(tdir.revision_dir(revision), record)
    switch_current(tdir, revision)
    return record


def fake_base_image(dirs: StateDir, content_hash: str = "ab" * 32) -> None:
    """A cached base guest image (files that boot nothing), made current: an image
    template builds on it without building a real one (apt, minutes)."""
    directory = dirs.images / content_hash
    directory.mkdir(parents=True)
    (directory / "vmlinux").write_bytes(b"k")
    (directory / "initrd.img").write_bytes(b"i")
    (directory / "manifest.json").write_text(json.dumps({
        "content_hash": content_hash, "builder_version": "test",
        "kernel_version": "6.1.0-99-amd64", "kernel_file": "vmlinux", "packages": {},
        "created_at": 0.0}))
    (dirs.images / "current.json").write_text(json.dumps({"content_hash": content_hash}))
