"""The one thread every libvirt call of this process runs on, with libvirtaio's event loop.

Why a thread of its own: libvirt takes one event implementation per process, for the
process's lifetime, and libvirtaio binds it to one asyncio loop whose handles must be
added and removed on that loop's thread. boxui's callers each run their own loop (the
daemon's, a CLI's `asyncio.run`, every test's), which come and go; this loop stays. Every
libvirt call is made here, so libvirtaio is only ever touched from its own thread, and a
slow remote call blocks this loop, never the caller's. Results and events cross back with
`wrap_future` and `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import libvirtaio

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    started.set()
    loop.run_forever()


def libvirt_loop() -> asyncio.AbstractEventLoop:
    """The libvirt thread's loop, started (and libvirtaio registered) on first use."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            started = threading.Event()
            thread = threading.Thread(target=_run, args=(loop, started),
                                      name="boxui-libvirt", daemon=True)
            thread.start()
            if not started.wait(timeout=10):
                raise RuntimeError("the libvirt event thread did not start")
            _loop = loop
        return _loop


def _silence_default_errors() -> None:
    # libvirt prints every error to stderr unless told otherwise; boxui reports its own
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


async def on_libvirt(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` on the libvirt thread; await its result from the caller's loop."""
    loop = libvirt_loop()

    async def call() -> T:
        return fn(*args)

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


_silence_default_errors()
