"""boxui's own guest kernel: finding it in the cache, checking its configuration, and the
default image booting it (with an initrd of its own) while OS images keep Debian's."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from backend.guest.errors import GuestImageError
from backend.guest.guest_files import BUILTIN_INIT
from backend.guest.image_builder import build_default_image, load_current_image
from backend.guest.newc import read_archive
from backend.guest.small_kernel import (
    KERNEL_FILE,
    config_digest,
    dropped_options,
    find_small_kernel,
    required_options,
)
from tests.guest.test_build_flow import FakeApt
from tests.guest.test_elf_and_kernel import elf_with_pvh_note


def put_kernel(cache: Path, key: str, body: bytes, *, built_at: float = 1.0,
               config: str | None = None) -> None:
    directory = cache / key
    directory.mkdir(parents=True)
    (directory / KERNEL_FILE).write_bytes(body)
    (directory / "kernel.json").write_text(json.dumps({
        "version": f"6.1.{key}-boxui", "sha256": hashlib.sha256(body).hexdigest(),
        "config_sha256": config or config_digest(), "built_at": built_at}))


def test_the_newest_kernel_of_this_configuration_is_found(tmp_path: Path) -> None:
    assert find_small_kernel(tmp_path) is None
    put_kernel(tmp_path, "1", b"old", built_at=1.0)
    put_kernel(tmp_path, "2", b"new", built_at=2.0)
    put_kernel(tmp_path, "3", b"other config", built_at=3.0, config="0" * 64)
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "kernel.json").write_text("{not json")
    found = find_small_kernel(tmp_path)
    assert found is not None and found.path == tmp_path / "2" / KERNEL_FILE
    assert found.version == "6.1.2-boxui"


def test_debian_kernel_can_be_asked_for(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    put_kernel(tmp_path, "1", b"k")
    monkeypatch.setenv("BOXUI_GUEST_KERNEL", "debian")
    assert find_small_kernel(tmp_path) is None


def test_an_option_kconfig_dropped_is_named(tmp_path: Path) -> None:
    fragment = tmp_path / "frag.config"
    fragment.write_text("# what it is for\nCONFIG_A=y\nCONFIG_B=\"x\"\n# CONFIG_C is not set\n")
    assert required_options(fragment) == {"CONFIG_A": "y", "CONFIG_B": '"x"'}
    assert dropped_options("CONFIG_A=y\nCONFIG_B=\"x\"\n", fragment) == []
    assert dropped_options("CONFIG_A=y\nCONFIG_B=\"y\"\n", fragment) == ['CONFIG_B="x"']


def test_the_shipped_fragment_builds_in_what_the_default_guest_uses() -> None:
    options = required_options()
    for needed in ("CONFIG_PVH", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_NET",
                   "CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO", "CONFIG_VIRTIO_CONSOLE",
                   "CONFIG_VIRTIO_BALLOON", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_ACPI_BUTTON",
                   "CONFIG_INPUT_EVDEV", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_RD_GZIP",
                   "CONFIG_BINFMT_SCRIPT", "CONFIG_UNIX", "CONFIG_INET", "CONFIG_KVM_GUEST"):
        assert options.get(needed) == "y", needed
    assert "CONFIG_MODULES" not in options  # everything built in: the guest loads none


async def test_default_image_boots_boxuis_kernel_and_os_images_keep_debians(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeApt(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    debian_only = await build_default_image(cache)
    kernels = tmp_path / "kernels"
    monkeypatch.setenv("BOXUI_KERNEL_CACHE", str(kernels))
    put_kernel(kernels, "1", elf_with_pvh_note())

    image = await build_default_image(cache)
    assert not image.cache_hit and image.content_hash != debian_only.content_hash
    assert image.kernel.name == "vmlinux-boxui" and image.kernel_version == "6.1.1-boxui"
    assert image.kernel.read_bytes() == elf_with_pvh_note()
    assert image.builtin_drivers
    assert image.os_kernel.name == "vmlinuz" and image.os_kernel_version == "9.9"
    assert image.os_initrd.read_bytes() == debian_only.initrd.read_bytes()
    entries = {e.name: e for e in read_archive(gzip.decompress(image.initrd.read_bytes()))}
    assert entries["init"].data == BUILTIN_INIT.encode()
    assert "insmod" not in BUILTIN_INIT
    assert load_current_image(cache) == image.model_copy(update={"cache_hit": True})

    put_kernel(kernels, "2", elf_with_pvh_note() + b"rebuilt", built_at=2.0)
    rebuilt = await build_default_image(cache)  # a new kernel: a new image (and templates)
    assert not rebuilt.cache_hit and rebuilt.content_hash != image.content_hash
    assert rebuilt.kernel_version == "6.1.2-boxui"


async def test_a_kernel_changed_after_its_build_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeApt(monkeypatch, tmp_path)
    kernels = tmp_path / "kernels"
    monkeypatch.setenv("BOXUI_KERNEL_CACHE", str(kernels))
    put_kernel(kernels, "1", b"built")
    (kernels / "1" / KERNEL_FILE).write_bytes(b"tampered")
    with pytest.raises(GuestImageError, match="changed since it was built"):
        await build_default_image(tmp_path / "cache")
