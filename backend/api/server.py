"""Serving the API on the state dir's unix socket with uvicorn.

The socket is created by boxui, not uvicorn (which would make it 0666): bound under a
0177 umask inside the 0700 run dir and then set to 0600, so only its owner can connect.
A leftover socket of a killed daemon is removed first; that is safe because the caller
holds the state dir's lock, so no live daemon can own it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from backend.api.app import create_app
from backend.api.context import ApiContext

log = logging.getLogger("boxui.api")

GRACEFUL_SHUTDOWN = 2


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    def install_signal_handlers(self) -> None:
        return None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_api_socket(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)  # clients may connect (and wait) from here on
    return sock


async def serve_api(ctx: ApiContext, stop: asyncio.Event,
                    listening: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set; then end event streams, finish requests, remove the
    socket. Other tasks of the supervisor are not touched."""
    dirs = ctx.engine.dirs
    await asyncio.to_thread(dirs.ensure_api_socket_dir)
    path = dirs.api_socket
    sock = await asyncio.to_thread(bind_api_socket, path)
    config = uvicorn.Config(create_app(ctx), log_config=None, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
    server = _Server(config)
    log.info("API listening on %s", path)
    if listening is not None:
        listening.set()
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="api-server")
    waiting = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        ctx.closing.set()
        server.should_exit = True
        await serving
    finally:
        waiting.cancel()
        ctx.closing.set()
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
