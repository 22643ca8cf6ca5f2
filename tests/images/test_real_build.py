"""One real image build: mmdebstrap against Debian's mirror, the real kernel's modules,
mkfs.ext4. Marked `slow` (part of `bin/test`; ~1.5 min here, more under load)."""

from __future__ import annotations

import shutil
import time

import pytest

from backend.images.builder import BuildTools, build_image
from backend.images.kernel import KernelModules, ProgressFn, kernel_from_cache
from backend.images.progress import ImageProgress
from backend.state.state_dir import StateDir
from tests.conftest import IMAGE_CACHE
from tests.images.helpers import debugfs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mmdebstrap") is None,
                                 reason="mmdebstrap is not installed (bin/setup installs it)")]

RECIPE = """
description = "the smallest image: essential packages, iproute2 and a file"
suite = "bookworm"
updates = false
security = false
packages = ["iproute2"]
run = ["echo built > /etc/boxui-test"]
"""


async def shared_kernel(_dirs: StateDir, report: ProgressFn) -> KernelModules:
    return await kernel_from_cache(IMAGE_CACHE, report)


async def test_real_build_then_cache_hit(dirs: StateDir) -> None:
    (dirs.images / "recipes").mkdir(parents=True)
    (dirs.images / "recipes" / "small.toml").write_text(RECIPE)
    tools = BuildTools(kernel=shared_kernel)
    events: list[ImageProgress] = []
    built = await build_image(dirs, "small", events.append, tools=tools)
    assert not built.cache_hit and built.image.packages > 50
    rootfs = built.image.rootfs
    assert "ip" in debugfs(rootfs, "ls -l /usr/bin")
    assert debugfs(rootfs, "cat /etc/boxui-test").strip() == "built"
    version = built.image.kernel_version
    modules = f"/usr/lib/modules/{version}"
    assert "modules.dep" in debugfs(rootfs, f"ls {modules}")
    assert "virtio_blk.ko" in debugfs(rootfs, f"ls {modules}/kernel/drivers/block")
    assert "File not found" in debugfs(rootfs, f"ls {modules}/kernel/sound") or \
        "sound" not in debugfs(rootfs, f"ls {modules}/kernel")
    steps = {e.step for e in events}
    assert {"resolving", "downloading", "unpacking", "configuring", "packing"} <= steps
    started = time.monotonic()
    again = await build_image(dirs, "small", tools=tools)
    assert again.cache_hit and again.image.hash == built.image.hash
    assert time.monotonic() - started < 30
