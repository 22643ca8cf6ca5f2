"""A tiny reader and writer for the cpio "newc" format the Linux initramfs uses.

Why not the `cpio` tool here: the per-machine seed archive must carry exact modes and
root ownership for a few files whose contents live only in memory (keys). Writing the
format directly avoids staging secrets on disk with the right owner first. The base
image, a real file tree, is packed with `cpio` itself.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

_MAGIC = b"070701"
_HEADER_LEN = 110
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `mode` includes the file type bits (S_IFDIR, S_IFREG, ...)."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: Entry, namesize: int) -> bytes:
    nlink = 2 if entry.is_dir else 1
    fields = (
        ino, entry.mode, entry.uid, entry.gid, nlink, entry.mtime, len(entry.data),
        0, 0, 0, 0, namesize, 0,
    )  # fmt: skip
    return _MAGIC + b"".join(b"%08X" % value for value in fields)


def write_archive(entries: Iterable[Entry]) -> bytes:
    """Serialise `entries` (parents before children) plus the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(_TRAILER, 0)], start=1):
        if entry.name.startswith("/") or ".." in entry.name.split("/"):
            raise ValueError(f"archive member name must be relative: {entry.name!r}")
        name = entry.name.encode() + b"\0"
        is_trailer = entry.name == _TRAILER
        out += _header(0 if is_trailer else ino, entry, len(name))
        out += name + _pad4(_HEADER_LEN + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def read_archive(blob: bytes) -> list[Entry]:
    """Parse one uncompressed newc archive (up to its trailer)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if blob[pos : pos + 6] != _MAGIC:
            raise ValueError(f"bad newc magic at offset {pos}")
        fields = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, mtime, filesize, namesize = (
            fields[1], fields[2], fields[3], fields[5], fields[6], fields[11],
        )  # fmt: skip
        name_start = pos + _HEADER_LEN
        name = blob[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(_HEADER_LEN + namesize) % 4)
        data = blob[data_start : data_start + filesize]
        pos = data_start + filesize + (-filesize % 4)
        if name == _TRAILER:
            return entries
        entries.append(Entry(name, mode, data, uid, gid, mtime))
