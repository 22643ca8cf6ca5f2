"""The build/caching flow offline: apt and the tree assembly are faked, cpio is real."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from backend.guest import apt, image_builder, tools
from backend.guest.errors import GuestImageError
from backend.guest.image_builder import build_default_image, load_current_image
from backend.guest.newc import read_archive

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


class FakeApt:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.source = tmp_path / "source"
        self.source.mkdir()
        self.assembled = 0
        self.fail_assembly = False
        self.deb_body = b"deb-1"
        candidate = apt.Candidate("fake-kernel", "1", "amd64", "0" * 64)

        async def resolve() -> str:
            return "fake-kernel"

        async def candidates(names: list[str]) -> dict[str, apt.Candidate]:
            return {"fake-kernel": candidate}

        async def ensure(debs_dir: Path, wanted: object) -> tuple[dict[str, Path], list[str]]:
            debs_dir.mkdir(parents=True, exist_ok=True)
            deb = debs_dir / candidate.deb_filename
            deb.write_bytes(self.deb_body)
            return {"fake-kernel": deb}, []

        async def fake_dpkg(argv: list[str], **_: object) -> bytes:
            extracted = Path(argv[-1])
            (extracted / "boot").mkdir(exist_ok=True)
            (extracted / "boot/vmlinuz-9.9").write_bytes(b"not really a kernel")
            return b""

        def assemble(extracted: Path, root: Path) -> str:
            self.assembled += 1
            (root / "init").write_text("#!/bin/sh\n")
            (root / "etc").mkdir()
            (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
            if self.fail_assembly:
                raise GuestImageError("simulated failure half way")
            return "9.9"

        # no kernel of boxui's, whatever this host has built (test_guest_kernel.py has it)
        monkeypatch.setenv("BOXUI_KERNEL_CACHE", str(tmp_path / "no-kernels"))
        monkeypatch.setattr(apt, "resolve_kernel_package", resolve)
        monkeypatch.setattr(apt, "candidates", candidates)
        monkeypatch.setattr(apt, "ensure_debs", ensure)
        monkeypatch.setattr(image_builder, "assemble_tree", assemble)
        real_run = tools.run

        async def run(argv: list[str], **kwargs: object) -> bytes:
            if "dpkg-deb" in argv[0]:
                return await fake_dpkg(argv)
            return await real_run(argv, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(image_builder, "run", run)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeApt:
    return FakeApt(monkeypatch, tmp_path)


async def test_build_then_cache_hit_then_rebuild_on_new_input(
    fake: FakeApt, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    phases: list[str] = []
    first = await build_default_image(cache, lambda phase, _msg: phases.append(phase))
    assert not first.cache_hit and fake.assembled == 1
    assert {"download", "extract", "pack"} <= set(phases)
    assert first.kernel.name == "vmlinuz"  # no PVH payload in this fake kernel
    assert first.kernel.read_bytes() == b"not really a kernel"
    names = [e.name for e in read_archive(gzip.decompress(first.initrd.read_bytes()))]
    assert names == [".", "init", "etc", "etc/passwd"]
    assert first.initrd.parent == cache / first.content_hash

    second = await build_default_image(cache)
    assert second.cache_hit and fake.assembled == 1
    assert second.content_hash == first.content_hash
    current = load_current_image(cache)
    assert current is not None and current.content_hash == first.content_hash

    fake.deb_body = b"deb-2"  # a new package version in the archive
    third = await build_default_image(cache)
    assert not third.cache_hit and third.content_hash != first.content_hash
    assert fake.assembled == 2


async def test_initrd_is_reproducible(fake: FakeApt, tmp_path: Path) -> None:
    one = await build_default_image(tmp_path / "c1")
    two = await build_default_image(tmp_path / "c2")
    assert one.initrd.read_bytes() == two.initrd.read_bytes()


async def test_interrupted_build_leaves_no_half_image(fake: FakeApt, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fake.fail_assembly = True
    with pytest.raises(GuestImageError, match="half way"):
        await build_default_image(cache)
    assert sorted(p.name for p in cache.iterdir()) == [".lock", "debs"]
    assert load_current_image(cache) is None

    (cache / ".build-crashed").mkdir()  # as if a process had been killed mid-build
    fake.fail_assembly = False
    image = await build_default_image(cache)
    assert not image.cache_hit
    assert not list(cache.glob(".build-*"))
