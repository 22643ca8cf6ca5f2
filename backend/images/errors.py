"""Errors of image recipes and builds, one line each, naming what the user can fix."""

from __future__ import annotations

import os
from pathlib import Path

from backend.errors import BoxuiError


class RecipeError(BoxuiError):
    """A recipe that is missing or invalid: the message names the file and the field."""

    code = "invalid_recipe"


class ImageNotFoundError(BoxuiError):
    code = "not_found"

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        if known is None:
            super().__init__(f"no image named {name!r}")
        else:
            there = ", ".join(known) or "none (build one: boxui image build NAME)"
            super().__init__(f"no image {name!r}; images: {there}")


class ImageInUseError(BoxuiError):
    code = "busy"

    def __init__(self, name: str, users: list[str]) -> None:
        self.name = name
        self.users = users
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        kind = "" if all(u.startswith("template ") for u in users) else "machine(s) "
        super().__init__(f"image {name!r} is used by {kind}{shown}; remove them first")


class ImageBuildError(BoxuiError):
    """A build that failed: which step, and the package when one is to blame."""

    code = "build_failed"

    def __init__(self, step: str, reason: str, package: str | None = None) -> None:
        self.step = step
        self.package = package
        self.reason = " ".join(reason.split())
        where = f"{step} {package}" if package else step
        super().__init__(f"image build failed while {where}: {self.reason}; "
                         "no image was written")


def disk_full(path: Path) -> bool:
    """Tools report a full disk in their own words (tar: "Wrote only N of M bytes"), so
    a failure is also put down to one when under 1 MiB is left where the build writes."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < (1 << 20)
