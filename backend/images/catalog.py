"""What `boxui image ls` shows: `default`, every built image, and recipes not built yet."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from backend.guest.image_builder import GuestImage, load_current_image
from backend.images.errors import RecipeError
from backend.images.recipe import load_recipe, shipped_names, user_names
from backend.images.store import ImageInfo, list_images, users_of
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir

DEFAULT_NAME = "default"


class ImageListing(BaseModel):
    """One image: `default` (boxui's busybox guest, in RAM), a built root filesystem
    (`rootfs`), or a recipe not built yet (`built` false)."""

    name: str
    kind: Literal["default", "rootfs"]
    built: bool
    recipe: str | None = None
    description: str = ""
    hash: str | None = None
    built_at: datetime | None = None
    size_bytes: int | None = None
    kernel_version: str | None = None
    packages: int | None = None
    used_by: list[str] = Field(default_factory=list)


def default_listing(image: GuestImage | None) -> ImageListing:
    entry = ImageListing(name=DEFAULT_NAME, kind="default", built=image is not None,
                         description="boxui's busybox and dropbear guest, held in RAM")
    if image is None:
        return entry
    stat = image.initrd.stat()
    return entry.model_copy(update={
        "hash": image.content_hash, "kernel_version": image.kernel_version,
        "built_at": datetime.fromtimestamp(stat.st_mtime, UTC),
        "size_bytes": stat.st_size + image.kernel.stat().st_size})


def built_listing(info: ImageInfo, machines: list[LoadedMachine],
                  description: str = "") -> ImageListing:
    return ImageListing(name=info.name, kind="rootfs", built=True, recipe=info.recipe,
                        description=description, hash=info.hash,
                        built_at=info.built_at, size_bytes=info.size_bytes,
                        kernel_version=info.kernel_version, packages=info.packages,
                        used_by=users_of(machines, info.name))


def _description(dirs: StateDir, name: str) -> str:
    with contextlib.suppress(RecipeError):
        return load_recipe(dirs, name).description
    return ""


def catalog(dirs: StateDir, machines: Iterable[LoadedMachine]) -> list[ImageListing]:
    loaded = list(machines)
    entries = [default_listing(load_current_image(dirs.images))]
    built = {info.name: info for info in list_images(dirs)}
    for name in sorted({*built, *shipped_names(), *user_names(dirs)} - {DEFAULT_NAME}):
        if name in built:
            entries.append(built_listing(built[name], loaded, _description(dirs, name)))
        else:
            entries.append(ImageListing(name=name, kind="rootfs", built=False, recipe=name,
                                        description=_description(dirs, name),
                                        used_by=users_of(loaded, name)))
    return entries
