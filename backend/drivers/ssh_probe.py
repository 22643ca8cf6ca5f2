"""Is the guest's SSH server answering? Read its banner; nothing more.

QEMU's user-mode network accepts a TCP connection on the forwarded port even when nothing
listens in the guest, so "connect succeeded" proves nothing; a `SSH-2.0-...` banner does,
and costs the guest one short-lived connection without any authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

#: a loaded TCG Debian guest's sshd takes seconds to greet its first connection
FIRST_TRY = 5.0


async def ssh_banner(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> str | None:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            line = await reader.readline()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    text = line.decode(errors="replace").strip()
    return text if text.startswith("SSH-") else None


async def wait_for_banner(port: int, gone: Callable[[], bool], host: str = "127.0.0.1",
                          first_timeout: float = FIRST_TRY, max_timeout: float = 30.0) -> bool:
    """Until the banner comes (True) or `gone()` (False). A connection nothing listens
    for is closed at once (QEMU's user-mode network hangs up when the guest refuses it),
    so a try that waits has reached sshd, which forks a child for it: giving it up throws
    away a banner on its way and leaves that child counting against MaxStartups until its
    LoginGraceTime. So the first try waits as long as a loaded Debian guest takes to greet,
    and each later one twice as long as the last."""
    timeout = first_timeout
    while await ssh_banner(port, host, timeout) is None:
        if gone():
            return False
        timeout = min(timeout * 2, max_timeout)
        await asyncio.sleep(0.05)
    return True
