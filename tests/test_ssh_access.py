from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.errors import InvalidNameError
from backend.guest.machine_seed import MachineKeys, create_machine_keys, host_public_key
from backend.supervision.ssh_access import (
    SshError,
    SshTimeoutError,
    exec_command,
    find_ssh,
    ssh_argv,
    ssh_config_block,
    write_known_hosts,
)

PORT = 2222


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, MachineKeys]:
    machine_dir = tmp_path / "web"
    return machine_dir, create_machine_keys(machine_dir)


# --- helpers: the guest's side ------------------------------------------------------------


def _ssh_strings(blob: bytes) -> list[bytes]:
    out = []
    while blob:
        (length,) = struct.unpack(">I", blob[:4])
        out.append(blob[4 : 4 + length])
        blob = blob[4 + length :]
    return out


def dropbear_host_key(keys: MachineKeys) -> asyncssh.SSHKey:
    """The machine's host key, read back from the dropbear file the guest gets.

    The dropbear ed25519 format is string "ssh-ed25519", string seed||public; the seed
    alone rebuilds the private key, which asyncssh can then import as OpenSSH.
    """
    key_type, material = _ssh_strings(keys.host_key.read_bytes())
    assert key_type == b"ssh-ed25519" and len(material) == 64
    private = Ed25519PrivateKey.from_private_bytes(material[:32])
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    key = asyncssh.import_private_key(pem)
    # the rebuilt key must be the one the host pins, or every test below proves nothing
    assert (
        key.export_public_key("openssh").split()[1].decode() == (host_public_key(keys).split()[1])
    )
    return key


@dataclass
class FakeGuest:
    port: int
    commands: list[str] = field(default_factory=list)
    second_written_at: float | None = None
    #: commands marked by the registry (`run_on(marker=...)`) while they run
    marked: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)


_MARKED = re.compile(r"export BOXUI_COMMAND=([0-9a-f]+); (.*)", re.DOTALL)
_KILL_MARKED = re.compile(r"m=BOXUI_COMMAND=; m=\$\{m\}([0-9a-f]+);")


async def _handle(guest: FakeGuest, process: asyncssh.SSHServerProcess[bytes]) -> None:
    """What a guest's shell would do with a few commands; a marked one (`export
    BOXUI_COMMAND=ID; CMD`) runs CMD and can be killed by `kill_marked_argv`."""
    command = process.command or ""
    guest.commands.append(command)
    marked = _MARKED.fullmatch(command)
    match shlex.split(command) if marked is None else ["marked"]:
        case ["marked"]:
            assert marked is not None
            marker, inner = marked[1], marked[2]
            task = asyncio.current_task()
            assert task is not None
            guest.marked[marker] = task
            try:
                await _shell(guest, process, inner)
            except asyncio.CancelledError:
                process.exit_with_signal("KILL")
            finally:
                guest.marked.pop(marker, None)
        case ["sh", "-c", script] if (found := _KILL_MARKED.search(script)):
            victim = guest.marked.get(found[1])
            if victim is not None:
                victim.cancel()
                guest.killed.append(found[1])
            process.stdout.write(b"1\n" if victim is not None else b"0\n")
            process.exit(0)
        case _:
            await _shell(guest, process, command)


async def _shell(guest: FakeGuest, process: asyncssh.SSHServerProcess[bytes],
                 command: str) -> None:
    out, err = process.stdout, process.stderr
    match shlex.split(command):
        case ["echo", *words]:
            for word in words:
                out.write(word.encode() + b"\n")
            process.exit(0)
        case ["exit", n]:
            process.exit(int(n))
        case ["stream"]:
            out.write(b"first\n")
            await asyncio.sleep(0.3)
            guest.second_written_at = time.monotonic()
            out.write(b"second\n")
            process.exit(0)
        case ["cat"]:
            out.write(await process.stdin.read())
            process.exit(0)
        case ["err", message]:
            out.write(b"to stdout\n")
            err.write(message.encode() + b"\n")
            process.exit(3)
        case ["kill"]:
            process.exit_with_signal("KILL")
        case ["sleep", seconds]:
            await asyncio.sleep(float(seconds))
            process.exit(0)
        case _:
            err.write(b"unknown command\n")
            process.exit(127)


@contextlib.asynccontextmanager
async def fake_guest(
    host_key: asyncssh.SSHKey, authorized: MachineKeys
) -> AsyncIterator[FakeGuest]:
    """An in-process SSH server standing in for dropbear in the guest."""
    guest = FakeGuest(port=0)
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            authorized.client_public.read_text()
        ),
        process_factory=lambda process: _handle(guest, process),
        encoding=None,
        config=None,
    )
    guest.port = server.get_port()
    try:
        yield guest
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def guest(machine: tuple[Path, MachineKeys]) -> AsyncIterator[FakeGuest]:
    async with fake_guest(dropbear_host_key(machine[1]), machine[1]) as g:
        yield g


class TimedSink:
    """A BytesIO that remembers when each chunk arrived."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.chunks: list[tuple[float, bytes]] = []
        self.flushes = 0

    def write(self, data: bytes) -> int:
        self.chunks.append((time.monotonic(), data))
        return self.buffer.write(data)

    def flush(self) -> None:
        self.flushes += 1

    def getvalue(self) -> bytes:
        return self.buffer.getvalue()


async def run(
    guest: FakeGuest,
    machine: tuple[Path, MachineKeys],
    argv: list[str],
    stdin: bytes | None = None,
    timeout: float = 5,  # a regression that hangs should fail, not stall the suite
) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    machine_dir, keys = machine
    code = await exec_command(
        guest.port, keys, machine_dir, argv, out, err, stdin=stdin, timeout=timeout
    )
    return code, out.getvalue(), err.getvalue()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- known_hosts, argv, config ------------------------------------------------------------


def test_known_hosts_pins_the_host_key_for_the_forwarded_port(
    machine: tuple[Path, MachineKeys],
) -> None:
    machine_dir, keys = machine
    path = write_known_hosts(machine_dir, keys, PORT)
    assert path == machine_dir / "known_hosts"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_type, key_b64 = host_public_key(keys).split()[:2]
    assert path.read_text() == f"[127.0.0.1]:{PORT} {key_type} {key_b64}\n"
    write_known_hosts(machine_dir, keys, PORT + 1)  # port changed: entry replaced
    assert path.read_text().startswith(f"[127.0.0.1]:{PORT + 1} ")


def test_ssh_argv_is_a_list_with_strict_checking(machine: tuple[Path, MachineKeys]) -> None:
    machine_dir, keys = machine
    argv = ssh_argv(machine_dir, keys, PORT)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[0] == "ssh"
    assert argv[argv.index("-i") + 1] == str(keys.client_key)
    assert argv[argv.index("-p") + 1] == str(PORT)
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert options == [
        f'UserKnownHostsFile="{machine_dir / "known_hosts"}"',
        "StrictHostKeyChecking=yes",
        "IdentitiesOnly=yes",
        "LogLevel=ERROR",
    ]
    assert argv[-1] == "root@127.0.0.1"
    assert "--" not in argv


def test_ssh_argv_puts_command_words_after_double_dash(
    machine: tuple[Path, MachineKeys],
) -> None:
    machine_dir, keys = machine
    argv = ssh_argv(machine_dir, keys, PORT, ["uname", "-a"], ssh_binary="/usr/bin/ssh")
    assert argv[0] == "/usr/bin/ssh"
    assert argv[-4:] == ["root@127.0.0.1", "--", "uname", "-a"]
    # ssh joins trailing words with spaces for the remote shell: each must stay one word
    quoted = ssh_argv(machine_dir, keys, PORT, ["echo", "a b", "'c'"])
    tail = quoted[quoted.index("--") + 1 :]
    assert shlex.split(" ".join(tail)) == ["echo", "a b", "'c'"]


def test_ssh_argv_identity_with_percent_uses_the_config_option(tmp_path: Path) -> None:
    machine_dir = tmp_path / "50%" / "web"
    keys = create_machine_keys(machine_dir)
    argv = ssh_argv(machine_dir, keys, PORT)
    assert "-i" not in argv
    assert f'IdentityFile="{tmp_path}/50%%/web/id_ed25519"' in argv


def test_ssh_config_block(machine: tuple[Path, MachineKeys]) -> None:
    machine_dir, keys = machine
    block = ssh_config_block("web", machine_dir, keys, PORT)
    lines = [line.strip() for line in block.splitlines()]
    assert lines[0] == "Host boxui-web"
    assert f"Port {PORT}" in lines and "User root" in lines
    assert "HostName 127.0.0.1" in lines and "IdentitiesOnly yes" in lines
    assert "StrictHostKeyChecking yes" in lines
    assert f'IdentityFile "{keys.client_key}"' in lines


def test_ssh_config_block_quotes_a_path_with_a_space(tmp_path: Path) -> None:
    machine_dir = tmp_path / "my vms" / "100%" / "web"
    keys = create_machine_keys(machine_dir)
    block = ssh_config_block("web", machine_dir, keys, PORT)
    assert f'UserKnownHostsFile "{tmp_path}/my vms/100%%/web/known_hosts"' in block
    assert f'IdentityFile "{tmp_path}/my vms/100%%/web/id_ed25519"' in block


def test_ssh_config_block_rejects_bad_name_and_line_breaks(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "ok")
    with pytest.raises(InvalidNameError):
        ssh_config_block("*", tmp_path / "ok", keys, PORT)
    with pytest.raises(SshError, match="line break"):
        ssh_config_block("web", tmp_path / "a\nHost *", keys, PORT)


def test_find_ssh_names_the_package_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SshError, match="openssh-client") as info:
        find_ssh()
    assert "\n" not in str(info.value)


# --- exec_command against an in-process SSH server ----------------------------------------


async def test_exec_streams_output_before_the_command_finishes(
    guest: FakeGuest, machine: tuple[Path, MachineKeys]
) -> None:
    out, err = TimedSink(), TimedSink()
    code = await exec_command(guest.port, machine[1], machine[0], ["stream"], out, err)
    assert code == 0
    assert out.getvalue() == b"first\nsecond\n"
    first_at, first = out.chunks[0]
    assert first == b"first\n"
    assert guest.second_written_at is not None
    assert first_at < guest.second_written_at  # reached the sink while the guest slept
    assert out.flushes >= 2


async def test_exec_propagates_exit_status_and_stderr(
    guest: FakeGuest, machine: tuple[Path, MachineKeys]
) -> None:
    assert (await run(guest, machine, ["exit", "0"]))[0] == 0
    assert (await run(guest, machine, ["exit", "42"]))[0] == 42
    assert await run(guest, machine, ["err", "oops"]) == (3, b"to stdout\n", b"oops\n")


async def test_exec_signal_becomes_128_plus_n(
    guest: FakeGuest, machine: tuple[Path, MachineKeys]
) -> None:
    assert (await run(guest, machine, ["kill"]))[0] == 128 + 9


async def test_exec_keeps_each_argument_one_word(
    guest: FakeGuest, machine: tuple[Path, MachineKeys]
) -> None:
    words = ["a b", "'c'", '"d"', "$HOME", "e;f", ""]
    code, out, _ = await run(guest, machine, ["echo", *words])
    assert code == 0
    assert shlex.split(guest.commands[-1]) == ["echo", *words]
    assert out == b"".join(w.encode() + b"\n" for w in words)


async def test_exec_sends_stdin_then_eof(
    guest: FakeGuest, machine: tuple[Path, MachineKeys]
) -> None:
    data = os.urandom(200_000)
    assert await run(guest, machine, ["cat"], stdin=data) == (0, data, b"")
    assert await run(guest, machine, ["cat"]) == (0, b"", b"")  # EOF, no hang


async def test_exec_timeout(guest: FakeGuest, machine: tuple[Path, MachineKeys]) -> None:
    started = time.monotonic()
    with pytest.raises(SshTimeoutError, match="timed out"):
        await run(guest, machine, ["sleep", "5"], timeout=0.3)
    assert time.monotonic() - started < 2


async def test_exec_refuses_a_server_with_another_host_key(
    tmp_path: Path, machine: tuple[Path, MachineKeys]
) -> None:
    impostor = dropbear_host_key(create_machine_keys(tmp_path / "other"))
    async with fake_guest(impostor, machine[1]) as g:
        with pytest.raises(SshError, match="host key mismatch") as info:
            await run(g, machine, ["exit", "0"])
        assert g.commands == []
    assert f"127.0.0.1:{g.port}" in str(info.value)


async def test_exec_reports_rejected_client_key(
    tmp_path: Path, machine: tuple[Path, MachineKeys]
) -> None:
    stranger = create_machine_keys(tmp_path / "other")
    async with fake_guest(dropbear_host_key(machine[1]), stranger) as g:
        with pytest.raises(SshError, match="authentication failed"):
            await run(g, machine, ["exit", "0"])


async def test_exec_closed_port_fails_fast(machine: tuple[Path, MachineKeys]) -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(SshError, match="refused") as info:
        await exec_command(port, machine[1], machine[0], ["true"], io.BytesIO(), io.BytesIO())
    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(info.value) and "web" in str(info.value)


async def test_exec_connect_timeout_on_a_silent_port(machine: tuple[Path, MachineKeys]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never speak SSH
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SshError, match=r"timed out after 0\.3s"):
            await exec_command(
                port,
                machine[1],
                machine[0],
                ["true"],
                io.BytesIO(),
                io.BytesIO(),
                connect_timeout=0.3,
            )
    finally:
        server.close()
        await server.wait_closed()


# --- the real ssh binary against the same server ------------------------------------------

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="openssh-client missing")


async def _run_ssh(argv: list[str]) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 8)
    assert proc.returncode is not None
    return proc.returncode, out, err


def _no_user_config(argv: list[str]) -> list[str]:
    """The test must not depend on the tester's ~/.ssh/config."""
    return [argv[0], "-F", "none", "-o", "BatchMode=yes", *argv[1:]]


@pytest.fixture
async def awkward_machine(tmp_path: Path) -> AsyncIterator[tuple[Path, MachineKeys, FakeGuest]]:
    machine_dir = tmp_path / "dir with space" / "50%" / "web"
    keys = create_machine_keys(machine_dir)
    async with fake_guest(dropbear_host_key(keys), keys) as g:
        yield machine_dir, keys, g


@needs_ssh
@pytest.mark.parametrize("awkward", ["dir with space", "dir with space/50%"])
async def test_system_ssh_with_ssh_argv(tmp_path: Path, awkward: str) -> None:
    """Runs the real `ssh`: only it can tell whether the quoting is right."""
    machine_dir = tmp_path / awkward / "web"
    keys = create_machine_keys(machine_dir)
    async with fake_guest(dropbear_host_key(keys), keys) as g:
        write_known_hosts(machine_dir, keys, g.port)
        argv = _no_user_config(ssh_argv(machine_dir, keys, g.port, ["echo", "a b", "'c'"]))
        code, out, err = await _run_ssh(argv)
    assert (code, out) == (0, b"a b\n'c'\n"), err


@needs_ssh
async def test_system_ssh_rejects_an_unpinned_host(
    awkward_machine: tuple[Path, MachineKeys, FakeGuest],
) -> None:
    machine_dir, keys, g = awkward_machine
    write_known_hosts(machine_dir, keys, g.port + 1)  # pinned for another port only
    code, _, err = await _run_ssh(
        _no_user_config(ssh_argv(machine_dir, keys, g.port, ["exit", "0"]))
    )
    assert code == 255 and g.commands == [], err


@needs_ssh
async def test_system_ssh_with_config_block(
    tmp_path: Path,
    awkward_machine: tuple[Path, MachineKeys, FakeGuest],
) -> None:
    machine_dir, keys, g = awkward_machine
    write_known_hosts(machine_dir, keys, g.port)
    config = tmp_path / "ssh_config"
    config.write_text(ssh_config_block("web", machine_dir, keys, g.port))
    code, _, err = await _run_ssh(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "boxui-web", "exit", "7"]
    )
    assert code == 7, err
    assert g.commands == ["exit 7"]
