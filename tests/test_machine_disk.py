from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from backend.errors import SpecError
from backend.images.errors import ImageNotFoundError
from backend.images.store import find_image_in, list_images_in
from backend.state.disk_size import format_size, parse_size
from backend.state.machine_spec import MachineSpec, parse_spec
from backend.supervision.machine_disk import (
    DISK_FILE,
    DiskSizeError,
    disk_usage,
    ensure_disk,
    grow_disk,
    requested_size,
)
from tests.disk_helpers import MIB, fake_image

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img (qemu-utils) is not installed")


@pytest.mark.parametrize(("text", "size"), [("20G", 20 << 30), ("512M", 512 * MIB),
                                             ("1.5G", 1536 * MIB), ("20GiB", 20 << 30),
                                             ("1t", 1 << 40), ("100", MIB), ("2G ", 2 << 30)])
def test_sizes_people_write(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "20X", "-1G", "0", "0G", "1e3G", "20 GB x",
                                  "99999T"])
def test_bad_sizes_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(s) for s in (20 << 30, 1536 * MIB, 300 * MIB)] == ["20G", "1.5G",
                                                                           "300M"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [('name = "b"\nimage = "deb"\ndisk = "20X"\n', "key 'disk'"),
     ('name = "b"\nimage = "../x"\n', "key 'image'"),
     ('name = "b"\ndisk = "20G"\n', "disk: needs an image"),
     ('name = "b"\nimage = "deb"\nkernel = "/k"\n', "image: cannot be combined")])
def test_bad_disk_specs_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        parse_spec(text, Path("machine.toml"))


def test_image_store_lists_only_finished_images(tmp_path: Path) -> None:
    fake_image(tmp_path, "deb")
    half = tmp_path / "os" / "half"  # a build cut short: no image.json
    half.mkdir()
    (half / "rootfs.ext4").write_bytes(b"x")
    assert [i.name for i in list_images_in(tmp_path)] == ["deb"]
    assert find_image_in(tmp_path, "deb").size_bytes == 64 * MIB
    with pytest.raises(ImageNotFoundError, match="no image 'half'; images: deb"):
        find_image_in(tmp_path, "half")


def test_requested_size_is_at_least_the_image() -> None:
    assert requested_size(None, 64 * MIB) == 64 * MIB
    assert requested_size("1G", 64 * MIB) == 1 << 30
    with pytest.raises(DiskSizeError, match="smaller than the image"):
        requested_size("32M", 64 * MIB)


def _qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


@needs_qemu_img
def test_the_disk_is_an_overlay_on_the_untouched_base(tmp_path: Path) -> None:
    base = fake_image(tmp_path / "images") / "rootfs.ext4"
    before = base.stat()
    machine = tmp_path / "m"
    machine.mkdir()
    disk = ensure_disk(machine, base, 1 << 30)
    assert disk == machine / DISK_FILE and [p.name for p in machine.iterdir()] == [DISK_FILE]
    info = _qemu_img_info(disk)
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "raw"
    assert disk.stat().st_mode & 0o777 == 0o600
    usage = disk_usage(machine)
    assert usage is not None and usage.virtual_bytes == 1 << 30
    assert 0 < usage.allocated_bytes < 2 * MIB
    assert ensure_disk(machine, base, 2 << 30) == disk
    assert _qemu_img_info(disk)["virtual-size"] == 1 << 30
    assert base.stat().st_mtime_ns == before.st_mtime_ns


@needs_qemu_img
def test_grow_only(tmp_path: Path) -> None:
    base = fake_image(tmp_path / "images") / "rootfs.ext4"
    machine = tmp_path / "m"
    machine.mkdir()
    assert grow_disk(machine, 1 << 30) is None  # not made yet: nothing to grow
    ensure_disk(machine, base, 1 << 30)
    grown = grow_disk(machine, 3 << 30)
    assert grown is not None and grown.virtual_bytes == 3 << 30
    assert _qemu_img_info(machine / DISK_FILE)["virtual-size"] == 3 << 30
    with pytest.raises(DiskSizeError, match=r"cannot shrink .* from 3G to 2G"):
        grow_disk(machine, 2 << 30)
    assert _qemu_img_info(machine / DISK_FILE)["virtual-size"] == 3 << 30


def test_spec_round_trips_image_and_disk(tmp_path: Path) -> None:
    spec = MachineSpec(name="b", image="deb", disk="20G")
    from backend.state.machine_spec import read_spec, write_spec

    write_spec(tmp_path / "machine.toml", spec)
    assert read_spec(tmp_path / "machine.toml") == spec
