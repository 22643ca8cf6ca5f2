"""Waiting for an SSH banner from a guest whose sshd is slow to answer each connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from backend.drivers.ssh_probe import FIRST_TRY, wait_for_banner


def slow_sshd(delay: float, connections: list[int]) -> Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An sshd that greets each connection `delay` seconds after it came, as a loaded
    guest's OpenSSH does; `connections` counts them."""
    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await asyncio.sleep(delay)
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        await writer.drain()
        writer.close()
    return serve


async def test_a_slow_first_banner_is_waited_for_not_thrown_away() -> None:
    """A Debian guest under load greets seconds late: the first try takes that banner
    rather than leaving its sshd one more child and trying again."""
    connections: list[int] = []
    server = await asyncio.start_server(slow_sshd(3.0, connections), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with asyncio.timeout(30):
            assert await wait_for_banner(port, lambda: False)
    assert len(connections) == 1


async def test_each_try_waits_twice_as_long_as_the_last() -> None:
    connections: list[int] = []
    server = await asyncio.start_server(slow_sshd(1.5, connections), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with asyncio.timeout(15):
            assert await wait_for_banner(port, lambda: False, first_timeout=1.0)
    assert len(connections) == 2  # one try of 1 s, then one of 2 s: no storm of tries


async def test_nothing_listening_ends_a_try_at_once() -> None:
    """A closed connection (what QEMU's network makes of a refused one) is not waited on:
    the next try comes at once and takes the banner of an sshd that has started since."""
    connections: list[int] = []
    refused: list[int] = []
    greet = slow_sshd(0.0, connections)

    async def starting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(refused) == 2:
            await greet(reader, writer)
        else:
            refused.append(1)
            writer.close()

    server = await asyncio.start_server(starting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with asyncio.timeout(15):
            started = asyncio.get_running_loop().time()
            assert await wait_for_banner(port, lambda: False)
            assert asyncio.get_running_loop().time() - started < FIRST_TRY
    assert (len(refused), len(connections)) == (2, 1)


async def test_gone_ends_the_wait() -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with asyncio.timeout(15):
            assert await wait_for_banner(port, lambda: True) is False
