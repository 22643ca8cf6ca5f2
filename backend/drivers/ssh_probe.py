"""Is the guest's SSH server answering? Read its banner; nothing more.

QEMU's user-mode network accepts a TCP connection on the forwarded port even when nothing
listens in the guest, so "connect succeeded" proves nothing; a `SSH-2.0-...` banner does,
and costs the guest one short-lived connection without any authentication.
"""

from __future__ import annotations

import asyncio
import contextlib


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
