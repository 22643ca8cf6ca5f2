"""Serving the API on the state dir's unix socket with uvicorn (the socket itself:
`listen_socket`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from backend.api.app import create_app
from backend.api.context import ApiContext
from backend.api.exec_socket import bind_exec_socket, serve_exec_socket
from backend.api.listen_socket import listen_on_api_socket

log = logging.getLogger("boxui.api")

GRACEFUL_SHUTDOWN = 2


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    def install_signal_handlers(self) -> None:
        return None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_api(ctx: ApiContext, stop: asyncio.Event,
                    listening: asyncio.Event | None = None,
                    sock: socket.socket | None = None) -> None:
    """Serve until `stop` is set; then end event streams, finish requests, remove the
    socket. Other tasks of the supervisor are not touched. `sock`: the API socket if
    the caller bound it already (`listen_socket`); it is this function's from now on."""
    path = ctx.engine.dirs.api_socket
    if sock is None:
        sock = await asyncio.to_thread(listen_on_api_socket, ctx.engine.dirs)
    config = uvicorn.Config(create_app(ctx), log_config=None, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
    server = _Server(config)
    exec_sock = await asyncio.to_thread(bind_exec_socket, ctx.engine.dirs.exec_socket)
    log.info("API listening on %s", path)
    if listening is not None:
        listening.set()
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="api-server")
    exec_stop = asyncio.Event()
    exec_serving = None if exec_sock is None else asyncio.create_task(
        serve_exec_socket(ctx, exec_sock, exec_stop), name="exec-socket")
    waiting = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        ctx.closing.set()
        server.should_exit = True
        await serving
    finally:
        waiting.cancel()
        ctx.closing.set()
        exec_stop.set()
        if exec_serving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await exec_serving
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
