"""Shared folders: `--mount HOST_DIR[:GUEST_DIR][:ro]`, `mounts` in `machine.toml`.

A host folder reaches the guest through virtio-9p and is mounted there at boot.

Why the guest path defaults to the host path: that is what Lima does for its mounts and
what `multipass mount SRC NAME` does when no target is given, so a path printed by a
build in the guest (a compiler error, a test report) is the same path on the host.

The spec only checks the shape of the paths; whether the host folder exists is checked
by `check_mount_sources` when a machine is created and again before every boot, so a
`machine.toml` whose folder is gone for a while still loads, and then says why it cannot
start instead of booting a guest with a missing share.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from backend.errors import BoxuiError

MAX_MOUNTS = 8
#: where the guest's own kernel filesystems live: a share there would hide them, or be
#: hidden by them (systemd mounts /run and /dev afresh)
RESERVED_GUEST_DIRS = ("/proc", "/sys", "/dev", "/run")


class MountError(BoxuiError):
    code = "invalid_mount"


def mount_tag(index: int) -> str:
    """The virtio-9p tag of a machine's `index`-th mount: QEMU and the guest's mount
    line must name the same one, and a tag of our own says nothing about host paths."""
    return f"boxui{index}"


def _clean(path: str, what: str) -> str:
    if any(ch in path for ch in "\n\r\0"):
        raise ValueError(f"{what} {path[:60]!r}: must be one line without NUL")
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r}: must be an absolute path")
    if ".." in path.split("/"):
        raise ValueError(f"{what} {path!r}: must not contain '..'")
    return posixpath.normpath(path).replace("//", "/")


class MountSpec(BaseModel):
    """One shared folder: `host` (absolute) at `guest` (absolute), read-only if asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=4096)
    guest: str = Field(default="", max_length=4096)  # left out: the same path as `host`
    readonly: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _guest_defaults_to_host(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("guest") and "host" in data:
            return {**data, "guest": data["host"]}
        return data

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _clean(value, "host dir")

    @field_validator("guest")
    @classmethod
    def _guest(cls, value: str) -> str:
        cleaned = _clean(value, "guest dir")
        if cleaned == "/":
            raise ValueError("guest dir '/': cannot replace the guest's root")
        for reserved in RESERVED_GUEST_DIRS:
            if cleaned == reserved or cleaned.startswith(reserved + "/"):
                raise ValueError(f"guest dir {cleaned!r}: {reserved} belongs to the guest's "
                                 "kernel and init")
        return cleaned

    @property
    def guest_dir(self) -> str:
        return self.guest

    def describe(self) -> str:
        return f"{self.host} -> {self.guest}" + (" (read-only)" if self.readonly else "")


def check_mount_list(mounts: list[MountSpec]) -> list[MountSpec]:
    """Two shares at one guest path would hide one of them."""
    seen: set[str] = set()
    for mount in mounts:
        if mount.guest_dir in seen:
            raise ValueError(f"guest dir {mount.guest_dir!r} is mounted twice")
        seen.add(mount.guest_dir)
    return mounts


def parse_mount(text: str, cwd: Path | None = None) -> MountSpec:
    """`HOST_DIR[:GUEST_DIR][:ro]` as the CLI takes it; a relative HOST_DIR is taken from
    `cwd` (the caller's directory), as `scp` and `multipass mount` take it."""
    parts = text.split(":")
    readonly = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        readonly = parts.pop() == "ro"
    if len(parts) > 2 or not parts[0]:
        raise MountError(f"--mount {text!r}: expected HOST_DIR[:GUEST_DIR][:ro]")
    host = parts[0]
    if not host.startswith("/") and cwd is not None:
        host = str(cwd / host)
    try:
        return MountSpec(host=host, guest=parts[1] if len(parts) == 2 else host,
                         readonly=readonly)
    except ValueError as exc:  # pydantic's ValidationError is one
        errors = getattr(exc, "errors", None)
        detail = errors()[0]["msg"].removeprefix("Value error, ") if errors else str(exc)
        raise MountError(f"--mount {text!r}: {detail}") from None


def check_mount_sources(name: str, mounts: list[MountSpec]) -> None:
    """Every host folder exists and is a folder: refused before anything boots."""
    for mount in mounts:
        host = Path(mount.host)
        if not host.exists():
            raise MountError(f"{name}: mount {mount.host}: no such directory on this host")
        if not host.is_dir():
            raise MountError(f"{name}: mount {mount.host}: not a directory")
