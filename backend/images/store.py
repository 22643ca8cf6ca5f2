"""Built images on disk: `<state>/images/os/<name>/{rootfs.ext4,image.json}`.

`image.json` is written last, atomically, and the directory is renamed into place whole,
so a directory without a valid `image.json` is never an image (a build in progress, or
one that was killed); it is invisible here and removed by the next build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.images.errors import ImageInUseError, ImageNotFoundError
from backend.images.recipe import check_image_name
from backend.state.atomic_write import fsync_dir
from backend.state.machine_store import LoadedMachine
from backend.state.names import is_valid_name
from backend.state.state_dir import StateDir

ROOTFS_FILE = "rootfs.ext4"
INFO_FILE = "image.json"
#: names of directories that are not images: builds, and images on their way out
BUILD_PREFIX = ".build-"
TRASH_PREFIX = ".old-"


class ImageInfo(BaseModel):
    """What `image.json` says (the contract with machines that boot from an image)."""

    model_config = ConfigDict(frozen=True)

    name: str
    recipe: str
    hash: str
    built_at: datetime
    size_bytes: int = Field(ge=0)
    kernel_version: str
    packages: int = Field(ge=0)
    #: the image's directory; not stored, filled in when read
    path: Path = Field(default=Path(), exclude=True)

    @property
    def rootfs(self) -> Path:
        return self.path / ROOTFS_FILE


def os_images_dir(dirs: StateDir) -> Path:
    return dirs.images / "os"


def image_dir(dirs: StateDir, name: str) -> Path:
    return os_images_dir(dirs) / check_image_name(name)


def read_info(directory: Path) -> ImageInfo | None:
    """The image in `directory`, or None if it is not a whole one."""
    try:
        info = ImageInfo.model_validate_json((directory / INFO_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
    if info.name != directory.name or not (directory / ROOTFS_FILE).is_file():
        return None
    return info.model_copy(update={"path": directory})


def find_image(dirs: StateDir, name: str) -> ImageInfo | None:
    """The built image `name`, or None (never built, being built, or a build that died).
    `default`, the busybox guest every machine without an image boots, is not a root
    filesystem and is never returned here."""
    if not is_valid_name(name):
        return None
    return read_info(os_images_dir(dirs) / name)


def list_images(dirs: StateDir) -> list[ImageInfo]:
    try:
        entries = sorted(os_images_dir(dirs).iterdir())
    except OSError:
        return []
    found = (read_info(entry) for entry in entries if is_valid_name(entry.name))
    return [info for info in found if info is not None]


def remove_image(dirs: StateDir, name: str, users: list[str]) -> ImageInfo:
    """Delete image `name` unless a machine (`users`) boots from it: its overlay names
    the base by path, and a base changed under it would corrupt its disk."""
    info = find_image(dirs, check_image_name(name))
    if info is None:
        raise ImageNotFoundError(name)
    if users:
        raise ImageInUseError(name, sorted(users))
    discard_dir(info.path)
    return info


def discard_dir(directory: Path) -> None:
    """Remove `directory` so that no crash leaves a half-deleted image behind: it is
    renamed out of the image namespace first (one atomic step), then deleted."""
    trash = directory.with_name(f"{TRASH_PREFIX}{directory.name}.{os.urandom(4).hex()}")
    try:
        os.rename(directory, trash)
    except FileNotFoundError:
        return
    fsync_dir(directory.parent)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(dirs: StateDir) -> list[Path]:
    """Delete what killed builds and removals left; only under the build lock."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os_images_dir(dirs).iterdir():
            if entry.name.startswith((BUILD_PREFIX, TRASH_PREFIX)) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def users_of(machines: Iterable[LoadedMachine], name: str) -> list[str]:
    """Machines whose spec names image `name` (`image = "..."` in machine.toml)."""
    return sorted(m.name for m in machines
                  if m.spec is not None and getattr(m.spec, "image", None) == name)


def list_images_in(images_dir: Path) -> list[ImageInfo]:
    """`list_images` for code that holds the images directory rather than a StateDir."""
    try:
        entries = sorted((images_dir / "os").iterdir())
    except OSError:
        return []
    found = (read_info(entry) for entry in entries if is_valid_name(entry.name))
    return [info for info in found if info is not None]


def find_image_in(images_dir: Path, name: str) -> ImageInfo:
    """The built image `name` a machine boots from, or an error naming those there are:
    a machine whose image is missing cannot boot, and the user needs the choices."""
    info = read_info(images_dir / "os" / name) if is_valid_name(name) else None
    if info is None:
        raise ImageNotFoundError(name, [i.name for i in list_images_in(images_dir)])
    return info
