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

from backend.drivers.console_watch import ConsoleTail, wait_for_line
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import FAILED_MARKER, READY_MARKER


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

    Told by inotify as the log grows (`console_watch.wait_for_line`), so the time is the
    marker's own, not rounded up to a polling step; `still_running` (e.g. "is the QEMU
    pid alive") is asked at each wake, once a second at least, so a dead VM fails fast
    instead of running out the timeout.
    """
    start = time.monotonic()
    gone = None if still_running is None else (lambda: not still_running())
    try:
        async with asyncio.timeout(timeout):
            verdict = await wait_for_line(ConsoleTail(console_log),
                                          lambda line: scan_console(line, boot_id),
                                          asyncio.Event(), gone)
    except TimeoutError:
        raise GuestImageError(f"guest not ready after {timeout:.0f} s; "
                              f"see {console_log}") from None
    if verdict is None:
        raise GuestImageError(f"QEMU exited before the guest was ready; see {console_log}")
    if verdict is False:
        raise GuestImageError(f"guest failed to boot; see {console_log}")
    return time.monotonic() - start
