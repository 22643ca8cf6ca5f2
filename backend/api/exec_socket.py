"""`boxui exec`'s own socket: a framed protocol beside the HTTP API, for the native client.

`boxui exec NAME -- true` is timed against `ssh` over a ControlMaster connection, which
costs a few milliseconds more than the command's round trip to the guest. The HTTP route
costs more than that in parsing, validation and JSON with base64 bodies, and a client
speaking it needs an HTTP and a JSON parser; this socket needs neither, so the exec client
(`boxui/cli/exec_client.c`) is one small C file and the daemon's part is a few reads.
It runs the command exactly as `POST /v1/machines/{name}/exec` does (`MachineExec.run`:
counted in-flight work, the machine's kept SSH connection) and is served wherever the API
is (daemon or app), at `StateDir.exec_socket`, 0600 in the same private dir.

Request: `BXE1`, a u32 count N (big-endian, as every number here), then N strings, each a
u32 length and its UTF-8 bytes: the machine's name, then the command's argv.
Answer: frames of one kind byte, a u32 length and the payload: `o` stdout bytes, `e`
stderr bytes, then exactly one of `x` (the exit status, an i32) or `!` (a one-line error
message; the client prints `boxui: MESSAGE` and exits 1). The daemon then closes.
A request that begins `BXR1` is `boxui run`'s instead (backend/api/run_socket.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from backend.api.context import ApiContext
from backend.api.listen_socket import bind_api_socket
from backend.api.run_socket import parse_run_request, serve_run
from backend.api.socket_frames import U32, BadRequestError, exit_frame, frame
from backend.errors import BoxuiError, MachineNotFoundError
from backend.state.names import validate_name
from backend.supervision import exec_trace
from backend.supervision.machine_exec import ExecOutput

log = logging.getLogger("boxui.api")

MAGIC = b"BXE1"
#: `boxui run`: a cell (backend/api/run_socket.py)
RUN_MAGIC = b"BXR1"
#: bounds on a request, far above any real command line (ARG_MAX is 2 MiB)
MAX_STRINGS = 65536
MAX_REQUEST = 4 << 20
#: a client has this long to send its request once connected
READ_TIMEOUT = 10.0
#: in-flight commands get this long to finish when the server stops, as uvicorn gives
GRACEFUL_SHUTDOWN = 2.0

async def read_strings(reader: asyncio.StreamReader) -> list[str]:
    """The strings of one request, after its magic: a count, then each with its length."""
    try:
        (count,) = U32.unpack(await reader.readexactly(4))
        if not 2 <= count <= MAX_STRINGS:
            raise BadRequestError(f"a request names a machine and a command ({count} strings)")
        strings: list[str] = []
        total = 0
        for _ in range(count):
            (size,) = U32.unpack(await reader.readexactly(4))
            total += size
            if total > MAX_REQUEST:
                raise BadRequestError("the command line is too long")
            strings.append((await reader.readexactly(size)).decode())
    except asyncio.IncompleteReadError:
        raise BadRequestError("the request ended early") from None
    except UnicodeDecodeError:
        raise BadRequestError("the command line is not UTF-8") from None
    return strings


async def read_magic(reader: asyncio.StreamReader) -> bytes:
    try:
        magic = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        raise BadRequestError("the request ended early") from None
    if magic not in (MAGIC, RUN_MAGIC):
        raise BadRequestError("not a boxui exec request")
    return magic


def output_frames(output: ExecOutput) -> bytes:
    return (frame(b"o", output.stdout) + frame(b"e", output.stderr)
            + exit_frame(output.exit_code))


async def run_command(ctx: ApiContext, name: str, argv: list[str],
                      send: Callable[[bytes], None]) -> None:
    """Run one command as the HTTP route runs it and `send` its answer: the output as
    soon as the command ends (the idle mark is written after), or the one-line error."""
    sent = False

    def send_output(output: ExecOutput) -> None:
        nonlocal sent
        sent = True
        send(output_frames(output))
        exec_trace.mark("answered")

    try:
        validate_name(name)
        if ctx.engine.projection.state_of(name) is None and not ctx.engine.store.exists(name):
            raise MachineNotFoundError(name)
        await ctx.exec.run(name, argv, on_output=send_output)
    except BoxuiError as exc:
        if not sent:
            send(frame(b"!", str(exc).encode()))
        else:  # after the answer (the bookkeeping): the client has its output
            log.warning("exec in %s: %s", name, exc)


async def _handle(ctx: ApiContext, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    ctx.open_requests += 1  # a waiting client keeps an idle daemon, as a request does
    ctx.activity.set()
    sent: list[bytes] = []
    trace = exec_trace.begin()

    def send(frames: bytes) -> None:
        sent.append(frames)
        writer.write(frames)  # buffered by the transport if the client reads slowly

    try:
        try:
            magic, strings = await asyncio.wait_for(_read(reader), READ_TIMEOUT)
            exec_trace.mark("request read")
            if magic == RUN_MAGIC:
                await serve_run(ctx, parse_run_request(strings), reader, send)
            else:
                await run_command(ctx, strings[0], strings[1:], send)
        except (BadRequestError, TimeoutError) as exc:
            send(frame(b"!", f"the boxui daemon cannot read the request: {exc}".encode()))
        except Exception as exc:  # a bug: the client gets one line, the log the details
            log.exception("exec on the exec socket failed")
            if not sent:
                send(frame(b"!", f"the boxui daemon failed: {type(exc).__name__}: {exc}"
                           .encode()))
        with contextlib.suppress(ConnectionError):  # a client gone: nothing to tell
            await writer.drain()
        exec_trace.mark("drained")
    finally:
        writer.close()
        ctx.open_requests -= 1
        ctx.activity.set()
        exec_trace.end(trace)


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, list[str]]:
    magic = await read_magic(reader)
    return magic, await read_strings(reader)


def bind_exec_socket(path: Path) -> socket.socket | None:
    """The exec socket, bound and listening; None when it cannot be (a path too long for
    a socket, say): then clients find none and exec goes through the API."""
    try:
        return bind_api_socket(path)
    except OSError as exc:
        log.warning("no exec socket at %s: %s; exec goes through the API", path, exc)
        return None


async def serve_exec_socket(ctx: ApiContext, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve the exec socket until `stop` is set, then let commands in flight finish for
    a moment (as the API does), and remove it: no socket is left behind on any exit."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _handle(ctx, reader, writer)
        finally:
            handlers.discard(task)

    try:
        server = await asyncio.start_unix_server(handle, sock=sock)
        async with server:
            await stop.wait()
            server.close()
            if handlers:
                await asyncio.wait(set(handlers), timeout=GRACEFUL_SHUTDOWN)
            for task in handlers:
                task.cancel()
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            ctx.engine.dirs.exec_socket.unlink()
