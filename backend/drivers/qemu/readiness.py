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

from watchfiles import awatch

from backend.drivers.console_watch import ConsoleTail
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

    Woken by inotify as the log grows (`console_watch`), so the time is the marker's own,
    not rounded up to a polling step; `still_running` (e.g. "is the QEMU pid alive")
    is asked at each wake and at least once a second, so a dead VM fails fast instead
    of running out the timeout.
    """
    start = time.monotonic()
    tail = ConsoleTail(console_log)
    console_log.parent.mkdir(parents=True, exist_ok=True)
    changes = awatch(console_log.parent, debounce=10, step=10, rust_timeout=1000,
                     yield_on_timeout=True)
    try:
        async with asyncio.timeout(timeout):
            while (verdict := _verdict(tail, boot_id)) is None:
                if still_running is not None and not still_running():
                    raise GuestImageError(
                        f"QEMU exited before the guest was ready; see {console_log}")
                await anext(changes)
    except TimeoutError:
        raise GuestImageError(f"guest not ready after {timeout:.0f} s; "
                              f"see {console_log}") from None
    finally:
        await changes.aclose()
    if verdict is False:
        raise GuestImageError(f"guest failed to boot; see {console_log}")
    return time.monotonic() - start


def _verdict(tail: ConsoleTail, boot_id: str) -> bool | None:
    for line in tail.read_lines():
        result = scan_console(line, boot_id)
        if result is not None:
            return result
    return None
