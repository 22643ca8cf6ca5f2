"""ELF DT_NEEDED reading, PVH detection and bzImage unpacking on synthetic inputs."""

from __future__ import annotations

import lzma
import shutil
import struct
from pathlib import Path

import pytest

from backend.guest.elf import has_pvh_entry, needed_libraries
from backend.guest.errors import GuestImageError
from backend.guest.kernel_image import extract_vmlinux


def elf_with_pvh_note(note_type: int = 18) -> bytes:
    """A minimal ELF64 with one PT_NOTE program header holding a Xen note."""
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + b"\0\0\0\0"
    phoff, note_off = 64, 64 + 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, 56, 1)
    phdr = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def test_pvh_note_is_found_only_when_present() -> None:
    assert has_pvh_entry(elf_with_pvh_note())
    assert not has_pvh_entry(elf_with_pvh_note(note_type=17))
    assert not has_pvh_entry(b"MZ not an elf")


def bzimage(payload: bytes) -> bytes:
    setup_sects = 3
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + b"\0" * 16 + payload + b"trailing"


def test_xz_bzimage_yields_the_vmlinux() -> None:
    vmlinux = elf_with_pvh_note()
    packed = lzma.compress(vmlinux, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert extract_vmlinux(bzimage(packed)) == vmlinux


def test_kernel_without_pvh_or_unknown_compression_is_not_unpacked() -> None:
    no_pvh = lzma.compress(elf_with_pvh_note(note_type=1), format=lzma.FORMAT_XZ)
    assert extract_vmlinux(bzimage(no_pvh)) is None
    assert extract_vmlinux(bzimage(b"\x28\xb5\x2f\xfdzstd")) is None
    assert extract_vmlinux(b"not a kernel" * 100) is None


@pytest.mark.skipif(shutil.which("ls") is None, reason="needs a host binary")
def test_needed_libraries_of_a_host_binary() -> None:
    ls = Path(shutil.which("ls") or "")
    assert "libc.so.6" in needed_libraries(ls.resolve())


def test_non_elf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(GuestImageError):
        needed_libraries(path)
