"""Just enough ELF reading to list a binary's DT_NEEDED libraries.

Why: the guest's dropbear is Debian's dynamically linked build. If one library is
missing from the initramfs the guest still boots but sshd never starts, which shows up
only as a readiness timeout. Resolving the NEEDED closure at build time turns that into
a build error naming the missing library, and needs no `ldd` (which would execute it).
"""

from __future__ import annotations

import struct
from pathlib import Path

from backend.guest.errors import GuestImageError

_SHT_DYNAMIC = 6
_DT_NULL = 0
_DT_NEEDED = 1


def needed_libraries(path: Path) -> list[str]:
    """Return the sonames `path` (a 64-bit little-endian ELF) lists as DT_NEEDED."""
    return needed_sonames(path.read_bytes(), str(path))


def needed_sonames(data: bytes, what: str) -> list[str]:
    """DT_NEEDED of an ELF held in memory (an initramfs member); `what` names it."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestImageError(f"{what} is not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names: list[str] = []
    for _name, sh_type, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if sh_type != _SHT_DYNAMIC:
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED:
                end = data.index(b"\0", strtab_offset + value)
                names.append(data[strtab_offset + value : end].decode())
    return names


_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_entry(data: bytes) -> bool:
    """Whether an ELF kernel image carries the Xen PVH entry note QEMU's microvm boots.

    With it, QEMU jumps straight into the uncompressed kernel: no real-mode setup and,
    above all, no in-guest decompression, which costs ~5 s under TCG.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * phentsize
        )
        if p_type != _PT_NOTE:
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
