"""Image cache key, cache validity and apt output parsing, all without network."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path

import pytest

from backend.guest import apt, image_builder
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import (
    BUILTIN_INIT,
    GUEST_TEXT_FILES,
    INIT,
    MODULES,
    guest_text_fingerprint,
)
from backend.guest.image_builder import (
    BUILDER_VERSION,
    compute_content_hash,
    load_cached_image,
    load_current_image,
)


@pytest.fixture
def debs(tmp_path: Path) -> list[Path]:
    paths = []
    for name, body in [
        ("b_1_amd64.deb", b"bbb"),
        ("a_2_amd64.deb", b"aaaa"),
        ("c_3_amd64.deb", b""),
    ]:
        path = tmp_path / name
        path.write_bytes(body)
        paths.append(path)
    return paths


def test_same_inputs_same_hash_in_any_order(debs: list[Path]) -> None:
    first = compute_content_hash(debs, "init text")
    assert first == compute_content_hash(list(reversed(debs)), "init text")
    assert re.fullmatch("[0-9a-f]{64}", first), first  # a SHA-256, in hex


def test_changed_init_text_changes_hash(debs: list[Path]) -> None:
    assert compute_content_hash(debs, "init text") != compute_content_hash(debs, "init text ")


def test_changed_deb_content_or_name_changes_hash(debs: list[Path], tmp_path: Path) -> None:
    before = compute_content_hash(debs, "x")
    debs[0].write_bytes(b"bbc")
    after_content = compute_content_hash(debs, "x")
    renamed = debs[1].rename(tmp_path / "a_3_amd64.deb")
    after_name = compute_content_hash([debs[0], renamed, debs[2]], "x")
    assert len({before, after_content, after_name}) == 3


def test_bytes_moved_between_files_change_hash(tmp_path: Path) -> None:
    one, two = tmp_path / "1.deb", tmp_path / "2.deb"
    one.write_bytes(b"ab")
    two.write_bytes(b"c")
    before = compute_content_hash([one, two], "")
    one.write_bytes(b"a")
    two.write_bytes(b"bc")
    assert compute_content_hash([one, two], "") != before


def test_builder_version_is_part_of_the_key(debs: list[Path]) -> None:
    assert compute_content_hash(debs, "x") == compute_content_hash(debs, "x", BUILDER_VERSION)
    assert compute_content_hash(debs, "x") != compute_content_hash(debs, "x", "other/9")


def test_guest_fingerprint_covers_every_generated_file_and_mode() -> None:
    base = guest_text_fingerprint()
    assert INIT in base
    changed_text = dict(GUEST_TEXT_FILES, **{"etc/passwd": (0o644, "root::0:0::/:/bin/sh\n")})
    changed_mode = dict(GUEST_TEXT_FILES, **{"init": (0o644, INIT)})
    assert (
        len({base, guest_text_fingerprint(changed_text), guest_text_fingerprint(changed_mode)}) == 3
    )


def test_init_loads_modules_in_the_documented_order() -> None:
    positions = [INIT.index(f"/{name}.ko") for name, _ in MODULES]
    assert positions == sorted(positions)
    assert [name for name, _ in MODULES][:3] == ["virtio_ring", "virtio", "virtio_mmio"]


def test_init_asks_for_single_page_reports_once_the_balloon_is_up() -> None:
    # Linux 6.1 resets the order when the balloon registers: set after the insmods
    order = "/sys/module/page_reporting/parameters/page_reporting_order"
    for script in (INIT, BUILTIN_INIT):
        assert 'echo 0 > "$order"' in script and order in script
        assert script.index("page_reporting_order") > script.rfind("insmod")
        assert script.index("page_reporting_order") < script.index("exec /sbin/init")


def write_image(root: Path, content_hash: str, *, kernel_file: str = "vmlinux") -> Path:
    directory = root / content_hash
    directory.mkdir(parents=True)
    (directory / kernel_file).write_bytes(b"k")
    (directory / "initrd.img").write_bytes(gzip.compress(b"i"))
    manifest = {
        "content_hash": content_hash, "builder_version": BUILDER_VERSION,
        "kernel_version": "6.1.0-99-amd64", "kernel_file": kernel_file,
        "packages": {}, "created_at": 0.0,
    }  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_complete_cached_image_is_a_hit(tmp_path: Path) -> None:
    digest = "ab" * 32
    directory = write_image(tmp_path, digest)
    image = load_cached_image(tmp_path, digest)
    assert image is not None and image.cache_hit
    assert image.kernel == directory / "vmlinux" and image.kernel_version == "6.1.0-99-amd64"


@pytest.mark.parametrize("remove", ["manifest.json", "initrd.img", "vmlinux"])
def test_half_image_is_not_a_hit(tmp_path: Path, remove: str) -> None:
    digest = "cd" * 32
    (write_image(tmp_path, digest) / remove).unlink()
    assert load_cached_image(tmp_path, digest) is None


def test_manifest_for_another_hash_is_not_a_hit(tmp_path: Path) -> None:
    write_image(tmp_path, "ef" * 32).rename(tmp_path / ("01" * 32))
    assert load_cached_image(tmp_path, "01" * 32) is None


def test_current_pointer(tmp_path: Path) -> None:
    assert load_current_image(tmp_path) is None
    digest = "12" * 32
    write_image(tmp_path, digest)
    image_builder._set_current(tmp_path, digest)
    current = load_current_image(tmp_path)
    assert current is not None and current.content_hash == digest
    (tmp_path / "current.json").write_text('{"content_hash": "../../etc"}')
    assert load_current_image(tmp_path) is None


def test_leftover_build_dirs_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".build-abc" / "out").mkdir(parents=True)
    (tmp_path / "debs" / ".download-x").mkdir(parents=True)
    keep = write_image(tmp_path, "34" * 32)
    image_builder._remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([keep.name, "debs"])
    assert list((tmp_path / "debs").iterdir()) == []


async def test_build_lock_is_exclusive(tmp_path: Path) -> None:
    order: list[str] = []

    async def hold(tag: str) -> None:
        async with image_builder._build_lock(tmp_path):
            order.append(f"{tag}+")
            await asyncio.sleep(0.3)
            order.append(f"{tag}-")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


# --- apt output parsing -------------------------------------------------------------

DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
 |Depends: <linux-image-6.1.0-9-amd64-unsigned>
"""


def test_kernel_package_from_meta_depends() -> None:
    names = apt.parse_depends(DEPENDS)
    assert names == ["linux-image-6.1.0-56-amd64", "linux-image-6.1.0-9-amd64-unsigned"]
    assert apt.pick_kernel_package(names) == "linux-image-6.1.0-56-amd64"


def test_kernel_pick_is_numeric_and_skips_other_flavours() -> None:
    names = [
        "linux-image-6.1.0-9-amd64", "linux-image-6.1.0-10-amd64",
        "linux-image-6.1.0-11-amd64-unsigned", "linux-image-6.1.0-12-cloud-amd64",
        "linux-image-6.1.0-13-rt-amd64", "linux-image-6.1.0-14-amd64-dbg", "linux-image-amd64",
    ]  # fmt: skip
    assert apt.pick_kernel_package(names) == "linux-image-6.1.0-10-amd64"
    assert apt.pick_kernel_package(["linux-image-amd64"]) is None


SHOW = """Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64
Description-en: Standalone rescue shell
 with tons of builtin utilities
SHA256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744

Package: libc6
Version: 2.36-9+deb12u14
Architecture: amd64
SHA256: ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf
"""


def test_show_parsing_and_apt_download_file_names() -> None:
    found = apt.parse_show(SHOW)
    assert set(found) == {"busybox-static", "libc6"}
    busybox = found["busybox-static"]
    assert busybox.version == "1:1.35.0-4+deb12u1+b1"
    assert busybox.deb_filename == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    assert found["libc6"].deb_filename == "libc6_2.36-9+deb12u14_amd64.deb"


def test_prune_removes_only_superseded_versions_of_our_packages(tmp_path: Path) -> None:
    current = apt.parse_show(SHOW)
    names = [
        "libc6_2.36-9+deb12u14_amd64.deb", "libc6_2.36-9+deb12u1_amd64.deb",
        "linux-image-6.1.0-40-amd64_6.1.1-1_amd64.deb", "unrelated_1_amd64.deb",
    ]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = apt.prune_debs(tmp_path, current)
    assert sorted(p.name for p in removed) == sorted(names[1:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[3]])


async def test_unknown_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_run(argv: list[str], **_: object) -> bytes:
        if "no-such-pkg" in argv:  # apt-cache fails the whole call for one unknown name
            raise GuestImageError("apt-cache show failed")
        return SHOW.encode()

    monkeypatch.setattr(apt, "run", fake_run)
    monkeypatch.setattr(apt, "require_tool", lambda name: name)
    with pytest.raises(GuestImageError, match="no-such-pkg"):
        await apt.candidates(["libc6", "no-such-pkg"])
