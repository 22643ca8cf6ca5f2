"""A domain's serial console read as a libvirt stream, locally or over `qemu+ssh://`.

The stream is non-blocking and watched by libvirtaio: its readable callback runs on the
libvirt thread and hands each chunk to the reader's loop, so a console is read as its
bytes arrive, never polled. boxui starts its own domains paused, opens the console, then
resumes them: the reader sees the boot from its first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import libvirt

from backend.drivers.libvirt.loop_thread import on_libvirt

_EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
           | libvirt.VIR_STREAM_EVENT_HANGUP)


class ConsoleReader:
    """Complete lines of one domain's console, as they come."""

    def __init__(self, stream: libvirt.virStream, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = stream
        self._loop = loop
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending = b""
        self._closed = False

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        """On the libvirt thread: read what is there; b"" tells the reader it ended."""
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(65536)
                except libvirt.libvirtError:
                    data = b""
                if data == -2:  # nothing more for now
                    return
                self._loop.call_soon_threadsafe(self._chunks.put_nowait, bytes(data))
                if not data:
                    break
        else:
            self._loop.call_soon_threadsafe(self._chunks.put_nowait, b"")
        with contextlib.suppress(libvirt.libvirtError):
            stream.eventRemoveCallback()

    async def next_lines(self) -> list[str] | None:
        """The next complete lines; None once the console has ended."""
        while True:
            chunk = await self._chunks.get()
            if not chunk:
                return None
            data = self._pending + chunk
            complete, _, self._pending = data.rpartition(b"\n")
            if complete:
                return complete.decode(errors="replace").splitlines()

    async def wait_for(self, verdict: Callable[[str], bool | None], timeout: float) -> bool:
        """The first non-None verdict of a line; False if the console ends first."""
        async with asyncio.timeout(timeout):
            while (lines := await self.next_lines()) is not None:
                for line in lines:
                    result = verdict(line)
                    if result is not None:
                        return result
        return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def finish() -> None:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()

        await on_libvirt(finish)


async def open_console(conn: libvirt.virConnect, domain: libvirt.virDomain) -> ConsoleReader:
    loop = asyncio.get_running_loop()

    def attach() -> ConsoleReader:
        stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        reader = ConsoleReader(stream, loop)
        domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        stream.eventAddCallback(_EVENTS, reader._on_event, None)
        return reader

    return await on_libvirt(attach)
