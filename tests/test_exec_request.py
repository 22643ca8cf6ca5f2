"""`boxui exec` through the daemon: the CLI's own HTTP/1.1 request over the unix socket
(no httpx), against the real API server, and against sockets that misbehave."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from backend.errors import BoxuiError
from backend.state.engine import Engine
from boxui.ssh_commands import exec_through_daemon
from tests.api_helpers import Api

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def call(engine: Engine, name: str, argv: list[str]) -> int | None:
    """The blocking client in a thread, so the in-process server keeps serving."""
    return await asyncio.wait_for(
        asyncio.to_thread(exec_through_daemon, name, argv, engine.dirs), 20)


async def test_relays_output_and_exit_status(api: Api, engine: Engine,
                                             capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
    code = await call(engine, "vm", ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert code == 3
    assert capfdbinary.readouterr() == (b"hello\n", b"oops\n")
    # an answer far larger than one recv()
    assert await call(engine, "vm", ["seq", "1", "200000"]) == 0
    expected = "".join(f"{n}\n" for n in range(1, 200_001)).encode()
    assert capfdbinary.readouterr().out == expected


async def test_the_daemons_error_is_one_line(api: Api, engine: Engine) -> None:
    await api.client.post("/v1/machines", json={"name": "vm"})
    with pytest.raises(BoxuiError, match=r"^vm is stopped, not running; start it with"):
        await call(engine, "vm", ["true"])
    with pytest.raises(BoxuiError, match="no machine named 'ghost'"):
        await call(engine, "ghost", ["true"])


def test_no_daemon_is_none(home: Path) -> None:
    from backend.state.state_dir import open_state_dir

    dirs = open_state_dir(home)
    assert exec_through_daemon("vm", ["true"], dirs) is None  # no socket file
    dirs.api_socket.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(dirs.api_socket))  # a socket file nobody listens on (a killed daemon)
    stale.close()
    assert exec_through_daemon("vm", ["true"], dirs) is None


async def fake_daemon(engine: Engine, handler: Handler) -> asyncio.Server:
    engine.dirs.ensure_api_socket_dir()
    return await asyncio.start_unix_server(handler, str(engine.dirs.api_socket))


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  response: bytes) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(response)
    await writer.drain()
    writer.close()


async def test_a_chunked_answer_is_read(engine: Engine,
                                        capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    body = b'{"exit_code": 5, "stdout_b64": "aGk=", "stderr_b64": "", "command": {}}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
                + b"0\r\n\r\n")
    server = await fake_daemon(engine, lambda r, w: _answer(r, w, response))
    async with server:
        assert await call(engine, "vm", ["true"]) == 5
    assert capfdbinary.readouterr().out == b"hi"


@pytest.mark.parametrize("response", [
    b"",  # killed before answering
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"exit",  # killed mid-answer
])
async def test_a_daemon_gone_mid_request_is_one_clear_error(engine: Engine,
                                                            response: bytes) -> None:
    server = await fake_daemon(engine, lambda r, w: _answer(r, w, response))
    async with server:
        with pytest.raises(BoxuiError, match="did not answer: the connection closed") as info:
            await call(engine, "vm", ["true"])
    assert "\n" not in str(info.value)


def test_exec_imports_neither_httpx_nor_asyncssh(home: Path) -> None:
    """What `boxui exec` costs at start-up is what it imports: SSH and HTTP libraries
    are for the daemon (probed with no daemon running: the request is tried first)."""
    probe = ("import sys\n"
             "import boxui.cli.main\n"
             "from boxui.ssh_commands import exec_through_daemon\n"
             "assert exec_through_daemon('vm', ['true']) is None\n"
             "print(sorted(m for m in ('httpx', 'asyncssh') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "BOXUI_HOME": str(home)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
