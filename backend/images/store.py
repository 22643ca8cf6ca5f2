"""Reading the image store: `<state>/images/os/<name>/` with `rootfs.ext4` and `image.json`.

`image.json` is written last by a build, so a directory without it (a build in progress
or cut short) is not an image. Only reading lives here; building is the image builder's.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from backend.errors import BoxuiError
from backend.state.state_dir import StateDir

OS_IMAGES_DIR = "os"
ROOTFS_FILE = "rootfs.ext4"
META_FILE = "image.json"


class ImageNotFoundError(BoxuiError):
    code = "image_not_found"


class OsImage(BaseModel):
    """One built image; `rootfs` is the raw ext4 base every machine's disk is layered on."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    recipe: str
    hash: str
    built_at: float
    size_bytes: int
    kernel_version: str
    packages: dict[str, str] = {}
    rootfs: Path = Path()


def images_root(dirs: StateDir) -> Path:
    return dirs.images / OS_IMAGES_DIR


def _load(directory: Path) -> OsImage | None:
    try:
        meta = json.loads((directory / META_FILE).read_text())
        image = OsImage.model_validate({**meta, "rootfs": directory / ROOTFS_FILE})
    except (OSError, ValueError, ValidationError):
        return None
    return image if image.rootfs.is_file() else None


def list_images(dirs: StateDir) -> list[OsImage]:
    return list_images_in(dirs.images)


def list_images_in(images_dir: Path) -> list[OsImage]:
    root = images_dir / OS_IMAGES_DIR
    if not root.is_dir():
        return []
    found = (_load(entry) for entry in sorted(root.iterdir()) if not entry.name.startswith("."))
    return [image for image in found if image is not None]


def find_image(dirs: StateDir, name: str) -> OsImage:
    """The built image `name`, or an error naming the images there are."""
    return find_image_in(dirs.images, name)


def find_image_in(images_dir: Path, name: str) -> OsImage:
    root = images_dir / OS_IMAGES_DIR
    image = _load(root / name) if "/" not in name and name[:1] != "." else None
    if image is not None:
        return image
    names = ", ".join(i.name for i in list_images_in(images_dir)) or \
        "none (build one: boxui image build)"
    raise ImageNotFoundError(f"no image {name!r}; images: {names}")
