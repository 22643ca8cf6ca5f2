"""Our newc writer produces archives GNU cpio reads, and our reader reads them back."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from backend.guest.newc import Entry, read_archive, write_archive

ENTRIES = [
    Entry("etc", stat.S_IFDIR | 0o755),
    Entry("etc/a", stat.S_IFREG | 0o600, b"x" * 5),
    Entry("etc/bb", stat.S_IFREG | 0o644, b""),
    Entry("etc/ccc", stat.S_IFREG | 0o640, bytes(range(256))),
]


def test_roundtrip_keeps_names_modes_and_data() -> None:
    blob = write_archive(ENTRIES)
    assert len(blob) % 4 == 0
    assert read_archive(blob) == ENTRIES


def test_absolute_or_parent_names_are_refused() -> None:
    for bad in ("/etc/x", "a/../b"):
        with pytest.raises(ValueError):
            write_archive([Entry(bad, stat.S_IFREG | 0o600)])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_lists_our_archive() -> None:
    listing = subprocess.run(
        ["cpio", "-t", "-v", "--quiet"], input=write_archive(ENTRIES), capture_output=True,
        check=True,
    ).stdout.decode()  # fmt: skip
    lines = [line.split() for line in listing.splitlines()]
    assert [(line[0], line[-1]) for line in lines] == [
        ("drwxr-xr-x", "etc"), ("-rw-------", "etc/a"), ("-rw-r--r--", "etc/bb"),
        ("-rw-r-----", "etc/ccc"),
    ]  # fmt: skip
    assert all(line[2] == "root" and line[3] == "root" for line in lines)
