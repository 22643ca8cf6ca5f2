"""`boxui run` on the exec socket: a cell for the native client, streamed as frames.

`boxui run --template ... -- true` is held to half a second end to end, and a Python CLI
spends a good part of that starting and importing click, httpx and pydantic before it
sends anything. So the native client (`boxui/cli/exec_client.c`) parses run's options
itself and asks here, and the daemon runs the cell exactly as `POST /v1/cells` does
(`CellService.start`: the same checks before anything is made, the same steps and
events); only the way its lines travel differs.

Request: `BXR1`, a u32 count, then that many strings (as exec's): options as a key and
its values (`template`, `image`, `name`, `timeout`, `env` K=V: one value; `input` HOST
GUEST, `export` GUEST HOST_DIR: two; `keep`: none), then `--` and the command's argv.
Host paths are absolute: the client resolved them where it runs.
Answer frames: `i` (the cell started: its id), `s` (a step's message), `o`/`e` (the
command's output), then one `!` (an error, as exec's) or `w` (a line the client prints as
`boxui: LINE`) followed by `x` (the exit status).
While it waits the client may send one byte, `c`: cancel the cell (Ctrl-C); it is then
destroyed and the answer ends as above. A client that closes the connection cancels the
cell too, as a closed HTTP stream does; a daemon shutting down leaves it to the next
one's recovery.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from backend.api.context import ApiContext
from backend.api.socket_frames import BadRequestError, exit_frame, frame
from backend.cells.models import CellExport, CellInput, CellLine, CellRequest
from backend.cells.outcome import INTERRUPTED, cancelled_line, exit_status
from backend.errors import BoxuiError

#: values each option takes (the rest of a request is `--` and the command)
_ARITY = {"template": 1, "image": 1, "name": 1, "timeout": 1, "env": 1, "input": 2,
          "export": 2, "keep": 0}
CANCEL = b"c"


def parse_run_request(strings: list[str]) -> CellRequest:
    try:
        return _request(strings)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise BadRequestError(f"{where}: {problem['msg']}") from None


def _request(strings: list[str]) -> CellRequest:
    fields: dict[str, object] = {}
    env: dict[str, str] = {}
    inputs: list[CellInput] = []
    exports: list[CellExport] = []
    at = 0
    while at < len(strings) and strings[at] != "--":
        key, arity = strings[at], _ARITY.get(strings[at])
        values = strings[at + 1:at + 1 + (arity or 0)]
        if arity is None or len(values) != arity:
            raise BadRequestError(f"not an option of run: {key!r}")
        at += 1 + arity
        if key == "env":
            name, eq, value = values[0].partition("=")
            if not eq:
                raise BadRequestError(f"--env {values[0]!r}: not KEY=VALUE")
            env[name] = value
        elif key == "input":
            inputs.append(CellInput(host_path=values[0], guest_path=values[1]))
        elif key == "export":
            exports.append(CellExport(guest_path=values[0], host_dir=values[1]))
        else:
            fields[key] = values[0] if arity else True
    return CellRequest.model_validate({**fields, "env": env, "inputs": inputs,
                                       "exports": exports, "argv": strings[at + 1:]})


async def serve_run(ctx: ApiContext, request: CellRequest, reader: asyncio.StreamReader,
                    send: Callable[[bytes], None]) -> None:
    """Start the cell (or answer why it cannot run) and stream it to its end."""
    try:
        run = await ctx.cells.start(request)
    except BoxuiError as exc:
        send(frame(b"!", str(exc).encode()))
        return
    send(frame(b"i", run.id.encode()))
    client = asyncio.ensure_future(_client_asks(reader))
    closing = asyncio.ensure_future(ctx.closing.wait())
    line: asyncio.Future[CellLine] = asyncio.ensure_future(run.lines.get())
    finished = cancelled = False
    try:
        while True:
            waiting: set[asyncio.Future[Any]] = {line, client, closing}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if line.done():
                finished = _send_line(line.result(), send, cancelled)
                if finished:
                    return
                line = asyncio.ensure_future(run.lines.get())
            elif client.done():
                if not client.result():
                    return  # the client went: cancelled below
                cancelled = True
                run.cancel()
                client = asyncio.ensure_future(_client_asks(reader))
            else:
                return  # the daemon is going: its successor finishes the cell
    finally:
        if not finished and not closing.done():
            run.cancel()
        for waiter in (line, client, closing):
            waiter.cancel()


def _send_line(item: CellLine, send: Callable[[bytes], None], cancelled: bool) -> bool:
    """Frames for one line of the cell; True after its last."""
    if item.type == "output" and item.data_b64:
        send(frame(b"e" if item.stream == "stderr" else b"o",
                   base64.b64decode(item.data_b64)))
    elif item.type == "step" and item.message:
        send(frame(b"s", item.message.encode()))
    elif item.type == "error":
        send(frame(b"!", (item.message or "the cell failed").encode()))
        return True
    elif item.type == "result" and item.cell is not None:
        if cancelled:
            code, message = INTERRUPTED, cancelled_line(item.cell)
        else:
            code, status_line = exit_status(item.cell)
            message = status_line or ""
        send((frame(b"w", message.encode()) if message else b"") + exit_frame(code))
        return True
    return False


async def _client_asks(reader: asyncio.StreamReader) -> bool:
    """True when the client asks to cancel; False when it has gone."""
    with contextlib.suppress(ConnectionError):
        while byte := await reader.read(1):
            if byte == CANCEL:
                return True
    return False

