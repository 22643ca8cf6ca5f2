"""The native `boxui exec` client (boxui/cli/exec_client.c) and the daemon's exec socket:
the same output, exit statuses and one-line errors as the Python path, and everything it
does not serve itself handed to the Python entry point untouched."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from backend.api.socket_frames import frame
from backend.state.engine import Engine
from backend.state.state_dir import open_state_dir
from tests.api_helpers import Api

SOURCE = Path(__file__).resolve().parent.parent / "boxui" / "cli" / "exec_client.c"

#: stands in for boxui-py: shows how it was called
ECHO_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client built as bin/setup builds it, beside a boxui-py that echoes its argv."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    where = tmp_path_factory.mktemp("client")
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(where / "boxui"), str(SOURCE)],
                   check=True, timeout=120)
    shim = where / "boxui-py"
    shim.write_text(f"#!{sys.executable}\n{ECHO_ARGV}\n")
    shim.chmod(0o755)
    return where


async def run(argv: list[str], home: Path) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "BOXUI_HOME": str(home)})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out, err


def handed_over(result: tuple[int, bytes, bytes]) -> list[str]:
    code, out, err = result
    assert (code, err) == (0, b""), err
    handed: list[str] = json.loads(out)
    return handed


PYTHON_PATH = [sys.executable, "-m", "boxui"]


@pytest.mark.parametrize("command", [
    ["sh", "-c", "echo hello; echo oops >&2; exit 3"],
    ["sh", "-c", "kill -TERM $$"],  # a signal: the status the Python path exits with
    ["seq", "1", "200000"],  # far more than one read
    ["printf", "%s|", "two words", "", "ünï"],  # arguments arrive as they were given
])
async def test_the_same_as_the_python_path(api: Api, engine: Engine, client_dir: Path,
                                           command: list[str]) -> None:
    await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
    native = await run([str(client_dir / "boxui"), "exec", "vm", "--", *command],
                       engine.dirs.root)
    python = await run([*PYTHON_PATH, "exec", "vm", "--", *command], engine.dirs.root)
    assert native == python
    assert api.ctx.exec.registry.commands("vm")[0].command.startswith(command[0])


@pytest.mark.parametrize("args", [
    ["exec", "vm", "--timeout", "5", "--", "true"], ["exec", "vm", "--timeout=5", "--", "true"],
    ["exec", "--idempotent", "vm", "--", "true"], ["exec", "vm", "--attempts", "2", "--", "true"],
    ["exec", "vm", "true", "--timeout", "5"],  # click takes it there too (no `--`)
    ["exec", "vm", "ls", "-la"],  # an option the client cannot tell from exec's own
    ["exec", "vm", "--some-later-option", "--", "true"],
])
async def test_options_before_the_dashes_are_pythons_to_parse(api: Api, engine: Engine,
                                                              client_dir: Path,
                                                              args: list[str]) -> None:
    await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
    assert handed_over(await run([str(client_dir / "boxui"), *args], engine.dirs.root)) == args
    assert api.ctx.exec.registry.commands("vm") == []  # never sent to the guest as words


async def test_options_after_the_dashes_are_the_commands(api: Api, engine: Engine,
                                                         client_dir: Path) -> None:
    await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
    code, _out, err = await run([str(client_dir / "boxui"), "exec", "vm", "--", "echo", "-n",
                                 "--timeout", "-"], engine.dirs.root)
    assert (code, err) == (0, b"")
    [record] = api.ctx.exec.registry.commands("vm")
    assert record.argv == ["echo", "-n", "--timeout", "-"]


@pytest.mark.parametrize(("name", "message"), [
    ("vm", "vm is stopped, not running; start it with: boxui start vm"),
    ("ghost", "no machine named 'ghost'"),
])
async def test_the_daemons_errors_are_the_python_paths(api: Api, engine: Engine,
                                                       client_dir: Path, name: str,
                                                       message: str) -> None:
    await api.client.post("/v1/machines", json={"name": "vm"})
    native = await run([str(client_dir / "boxui"), "exec", name, "true"], engine.dirs.root)
    python = await run([*PYTHON_PATH, "exec", name, "true"], engine.dirs.root)
    assert native == python
    code, out, err = native
    assert (code, out) == (1, b"")
    assert err.decode().startswith(f"boxui: {message}")
    assert err.count(b"\n") == 1


@pytest.mark.parametrize("args", [
    ["ls", "--json"],
    ["exec", "vm"],  # a usage error: click's
    ["exec", "--help"],
    ["exec", "Bad", "true"],
    ["exec", "vm", "--", "true"],  # no daemon: Python starts one
])
async def test_what_it_does_not_serve_goes_to_python_untouched(
        home: Path, client_dir: Path, args: list[str]) -> None:
    result = await run([str(client_dir / "boxui"), *args], home)
    assert handed_over(result) == args


async def test_a_relative_or_long_state_dir_is_pythons(client_dir: Path,
                                                       tmp_path: Path) -> None:
    for home in (Path("relative/home"), tmp_path / ("x" * 120)):
        result = await run([str(client_dir / "boxui"), "exec", "vm", "true"], home)
        assert handed_over(result) == ["exec", "vm", "true"]


async def serve_exec_socket_once(engine: Engine, answer: bytes) -> asyncio.Server:
    """A stand-in daemon on the exec socket: reads the request's head, answers `answer`."""
    engine.dirs.ensure_api_socket_dir()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(engine.dirs.exec_socket))


@pytest.mark.parametrize(("answer", "error"), [
    (b"", "did not answer: the connection closed before an answer"),
    (frame(b"o", b"partial") + b"x\0\0", "did not answer: the connection closed in the"),
    (frame(b"?", b""), "the boxui daemon sent an answer boxui cannot read"),
])
async def test_a_daemon_gone_or_garbled_is_one_line(engine: Engine, client_dir: Path,
                                                    answer: bytes, error: str) -> None:
    async with await serve_exec_socket_once(engine, answer):
        code, _out, err = await run([str(client_dir / "boxui"), "exec", "vm", "true"],
                                    engine.dirs.root)
    assert code == 1
    assert err.startswith(b"boxui: ") and error.encode() in err and err.count(b"\n") == 1


def _exchange(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"BXE1" + struct.pack(">I", 1) + struct.pack(">I", 2) + b"vm",  # no command
    b"BXE1" + struct.pack(">I", 2) + struct.pack(">I", 2) + b"vm",  # cut short
])
async def test_a_bad_request_is_answered_with_one_error(api: Api, engine: Engine,
                                                        request_bytes: bytes) -> None:
    answer = await asyncio.to_thread(_exchange, engine.dirs.exec_socket, request_bytes)
    assert answer[:1] == b"!"
    (size,) = struct.unpack(">I", answer[1:5])
    assert answer[5:5 + size].startswith(b"the boxui daemon cannot read the request")
    assert len(answer) == 5 + size
    assert api.ctx.open_requests == 0


async def test_the_socket_goes_with_the_api(engine: Engine, api: Api) -> None:
    assert engine.dirs.exec_socket.exists()
    assert engine.dirs.exec_socket.stat().st_mode & 0o777 == 0o600


def test_setup_installs_the_native_client() -> None:
    """bin/setup (which made this venv) built the client as `boxui`, the Python entry
    point beside it; without a C compiler `boxui` stays the Python entry point."""
    entry = Path(sys.executable).with_name("boxui")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: bin/setup keeps the Python entry point")
    assert entry.read_bytes()[:4] == b"\x7fELF"
    assert entry.with_name("boxui-py").read_text().startswith(f"#!{entry.parent}/python\n")


async def test_a_socket_left_by_a_killed_daemon_is_pythons(home: Path, client_dir: Path) -> None:
    dirs = open_state_dir(home)
    dirs.ensure_api_socket_dir()
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(dirs.exec_socket))  # nobody listens: connecting is refused
        result = await run([str(client_dir / "boxui"), "exec", "vm", "--", "true"], home)
    assert handed_over(result) == ["exec", "vm", "--", "true"]
