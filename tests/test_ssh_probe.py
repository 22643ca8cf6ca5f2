"""Waiting for an SSH banner from a guest whose sshd is slow to answer each connection."""

from __future__ import annotations

import asyncio

from backend.drivers.ssh_probe import wait_for_banner


async def test_a_banner_slower_than_the_first_try_still_comes() -> None:
    """Every connection answers after 1.5 s, as a loaded guest's OpenSSH does: tries
    that all gave up after 1 s would never see it."""
    connections = 0

    async def slow_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await asyncio.sleep(1.5)
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_sshd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with asyncio.timeout(15):
            assert await wait_for_banner(port, lambda: False)
    assert connections == 2  # one try of 1 s, then one of 2 s: no storm of tries


async def test_gone_ends_the_wait() -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with asyncio.timeout(15):
            assert await wait_for_banner(port, lambda: True) is False
