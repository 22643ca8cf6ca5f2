"""A running machine's `console.log` is kept under a size limit.

QEMU writes the serial console straight to the file (so a VM outlives boxui with its
console still recorded), and a guest that prints for weeks would otherwise fill the
disk. The file cannot be renamed under QEMU (it would keep writing to the renamed one),
so it is rotated the way logrotate's `copytruncate` does: the content is copied to
`console.log.1` (replacing the previous one, atomically) and the file truncated in place;
QEMU opens it with `append=on`, so its next write lands at the new end. A boot rotates
the same way (the driver renames the old log to `console.log.1`), so one previous file is
kept either way. Bytes the guest writes between the copy and the truncation are lost:
microseconds, against a file of a megabyte.

The health sampler checks the size on its SSH-check rounds (every few seconds per
machine, staggered): one `stat`. inotify would tell instead, but it needs a watch per
running machine, and a user gets 128 inotify instances: a thousand machines would
exhaust them (and the app's console pane needs one too).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from backend.state.atomic_write import atomic_write_bytes

#: a console log is rotated once it is larger than this (one previous file is kept)
CONSOLE_LOG_LIMIT = 1 << 20


def rotate_if_large(path: Path, limit: int = CONSOLE_LOG_LIMIT) -> bool:
    """Copy-truncate `path` into `path.1` once it exceeds `limit`; True if it did."""
    try:
        if path.stat().st_size <= limit:
            return False
        with path.open("rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return False
    atomic_write_bytes(path.with_name(path.name + ".1"), data, 0o644)
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)
    return True
