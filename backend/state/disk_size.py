"""Disk sizes as people write them (`20G`, `512M`, `1.5T`, `20GiB`), in binary units.

Kept apart from the spec model so the CLI can check `--disk` while parsing its options
without importing pydantic. Units are powers of 1024, as `qemu-img` reads them; a size
is rounded up to whole MiB so the guest's disk is never a ragged number of sectors.
"""

from __future__ import annotations

import re

from backend.state.machine_limits import MAX_DISK_GIB

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIB = 1 << 20
MAX_DISK_BYTES = MAX_DISK_GIB << 30


def parse_size(text: str) -> int:
    """Bytes, rounded up to a MiB; ValueError with the syntax when `text` is not a size."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a size; write e.g. 20G, 512M or 1T")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.upper()])
    if size <= 0:
        raise ValueError(f"{text!r}: a disk must be larger than 0")
    if size > MAX_DISK_BYTES:
        raise ValueError(f"{text!r} is larger than the maximum of {MAX_DISK_GIB}G")
    return -(-size // MIB) * MIB


def format_size(size: int) -> str:
    """`20G`, `1.5G`, `300M`: short and exact enough for a person."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if size >= scale:
            value = size / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{size}B"
