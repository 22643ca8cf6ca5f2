"""A stand-in OS image in the image store's format, for tests that need no real guest."""

from __future__ import annotations

import json
from pathlib import Path

MIB = 1 << 20


def fake_image(images_dir: Path, name: str = "deb", size: int = 64 * MIB) -> Path:
    """`images_dir/os/<name>/` with a sparse `rootfs.ext4` of `size` and its image.json."""
    directory = images_dir / "os" / name
    directory.mkdir(parents=True)
    with (directory / "rootfs.ext4").open("wb") as handle:
        handle.truncate(size)
    meta = {"name": name, "recipe": "test", "hash": "ab" * 8, "built_at": 0.0,
            "size_bytes": size, "kernel_version": "6.1.0-test", "packages": 0}
    (directory / "image.json").write_text(json.dumps(meta))
    return directory
