"""Waiting for a guest to be ready by tailing its serial console log.

Why the console and not SSH polling: QEMU's user-mode networking accepts connections on
the forwarded port at once, long before the guest listens, so a TCP connect proves
nothing. The guest prints `BOXUI-READY <boot_id>` only after sshd listens; the boot id
makes a stale line from an earlier boot in the same log file impossible to mistake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from backend.guest.errors import GuestImageError
from backend.guest.guest_files import FAILED_MARKER, READY_MARKER

_POLL_SECONDS = 0.05


def scan_console(text: str, boot_id: str) -> bool | None:
    """True if `text` shows this boot ready, False if it failed, None if undecided."""
    for line in text.splitlines():
        words = line.strip().split()
        if words[:2] == [READY_MARKER, boot_id]:
            return True
        if words[:1] == [FAILED_MARKER] or "Kernel panic" in line:
            return False
    return None


async def wait_for_ready(
    console_log: Path,
    boot_id: str,
    timeout: float,
    still_running: Callable[[], bool] | None = None,
) -> float:
    """Wait until the console shows this boot ready; return seconds waited.

    `still_running` (e.g. "is the QEMU pid alive") lets a dead VM fail fast instead of
    running out the timeout.
    """
    start = time.monotonic()
    offset = 0
    pending = ""
    while True:
        try:
            with console_log.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        pending += chunk.decode(errors="replace")
        complete, _, pending = pending.rpartition("\n")
        verdict = scan_console(complete, boot_id)
        if verdict is True:
            return time.monotonic() - start
        if verdict is False:
            raise GuestImageError(f"guest failed to boot; see {console_log}")
        if still_running is not None and not still_running():
            raise GuestImageError(f"QEMU exited before the guest was ready; see {console_log}")
        if time.monotonic() - start > timeout:
            raise GuestImageError(f"guest not ready after {timeout:.0f} s; see {console_log}")
        await asyncio.sleep(_POLL_SECONDS)
