"""Templates of OS images: a clone boots the image from its own overlay on the disk
frozen with the snapshot, restores once, and cold-boots its own disk after that."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.errors import SpecError
from backend.guest.debian_initrd import DEBIAN_KERNEL_ARGS
from backend.state.state_dir import StateDir
from backend.supervision.machine_disk import DISK_FILE
from backend.templates.errors import SnapshotMismatchError, TemplateError
from backend.templates.layout import TemplateDir
from backend.templates.machine_from_template import spec_from_template
from backend.templates.restore_plan import MACHINE_DISK_FILE, plan_restore
from backend.templates.revision import TemplateRevision, read_revision, write_revision
from backend.templates.template_spec import parse_template
from tests.templates.helpers import QEMU_LIKE, REVISION, TCG, fabricate, snapshot_info


def disk_variant(dirs: StateDir, boot_args: str) -> Path:
    """A snapshot revision whose variant boots `debian-12` with a frozen disk."""
    fabricate(dirs, snapshot=snapshot_info(cmdline=boot_args))
    revision_dir = TemplateDir.of(dirs, "web").revision_dir(REVISION)
    record = read_revision(revision_dir)
    variant = record.variants["worker"].model_copy(
        update={"os_image": "debian-12", "disk_file": "disk.qcow2"})
    write_revision(revision_dir, TemplateRevision.model_validate(
        {**record.model_dump(), "variants": {"worker": variant.model_dump()}}))
    (revision_dir / "worker" / "disk.qcow2").write_bytes(b"frozen")
    return revision_dir / "worker" / "disk.qcow2"


def test_a_clone_restores_onto_the_frozen_disk_once_then_boots_its_own(
        dirs: StateDir) -> None:
    frozen = disk_variant(dirs, DEBIAN_KERNEL_ARGS)
    spec = spec_from_template(dirs, "c1", "web:worker")
    assert spec.image == "debian-12"  # cold boots (later starts) boot the image's way
    plan = plan_restore(dirs, spec, TCG, QEMU_LIKE)
    assert plan is not None and plan.disk == frozen
    machine_dir = dirs.machine_dir("c1")
    machine_dir.mkdir(parents=True)
    (machine_dir / MACHINE_DISK_FILE).write_bytes(b"overlay")
    assert plan_restore(dirs, spec, TCG, QEMU_LIKE) is None


def test_the_disk_variant_is_checked_with_the_debian_kernel_args(dirs: StateDir) -> None:
    disk_variant(dirs, "")  # a snapshot taken without them cannot be this variant's
    spec = spec_from_template(dirs, "c1", "web:worker")
    with pytest.raises(SnapshotMismatchError, match="boot args"):
        plan_restore(dirs, spec, TCG, QEMU_LIKE)


def test_a_missing_frozen_disk_is_an_error(dirs: StateDir) -> None:
    disk_variant(dirs, DEBIAN_KERNEL_ARGS).unlink()
    with pytest.raises(TemplateError, match=r"disk\.qcow2"):
        plan_restore(dirs, spec_from_template(dirs, "c1", "web:worker"), TCG, QEMU_LIKE)


def test_both_layers_name_the_machine_disk_alike() -> None:
    assert MACHINE_DISK_FILE == DISK_FILE


def test_template_image_is_default_or_an_image_name(tmp_path: Path) -> None:
    base = 'template_id = "t"\n[[variants]]\nrole = "r"\n'
    assert parse_template(base, tmp_path / "t.toml").os_image is None
    config = parse_template('image = "debian-12"\n' + base, tmp_path / "t.toml")
    assert config.os_image == "debian-12"
    with pytest.raises(SpecError, match="image"):
        parse_template('image = "Not An Image"\n' + base, tmp_path / "t.toml")
