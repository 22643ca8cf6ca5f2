"""The guest RNG agent (a hand-made ELF) and its host end, without a VM."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
from pathlib import Path

from backend.guest.rng_agent_elf import ENTROPY_BYTES, GUEST_PORT, agent_program
from backend.templates.rng_reseed import reseed_guest


def test_agent_is_a_small_static_elf() -> None:
    program = agent_program()
    assert program[:4] == b"\x7fELF" and len(program) < 1024
    entry = struct.unpack_from("<Q", program, 24)[0]
    assert 0x400000 < entry < 0x400000 + len(program)
    assert GUEST_PORT.encode() + b"\0" in program


def test_agent_reseeds_from_bytes_sent_down_its_port(tmp_path: Path) -> None:
    """A FIFO stands in for the virtio-serial port. As root the kernel accepts the
    entropy and reseeds (answer '0'); otherwise it refuses RNDADDENTROPY ('3')."""
    port = tmp_path / "port"
    os.mkfifo(port)
    program = tmp_path / "agent"
    program.write_bytes(agent_program(str(port)))
    program.chmod(0o700)
    agent = subprocess.Popen([str(program)])
    fd = os.open(port, os.O_RDWR)
    try:
        os.write(fd, os.urandom(40))  # arrives in pieces, as a port may deliver it
        os.write(fd, os.urandom(ENTROPY_BYTES - 40))
        status = agent.wait(timeout=10)
        answer = os.read(fd, 1)
    finally:
        os.close(fd)
        agent.kill()
    expected = 0 if os.geteuid() == 0 else 3
    assert (status, answer) == (expected, str(expected).encode())


async def test_host_end_sends_entropy_and_reads_the_answer(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readexactly(ENTROPY_BYTES))
        writer.write(b"0" if len(received) == 1 else b"4")
        await writer.drain()
        writer.close()

    path = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(agent, str(path))
    async with server:
        assert await reseed_guest(path) is None
        assert await reseed_guest(path) == "the guest refused RNDRESEEDCRNG"
    assert len(received) == 2 and received[0] != received[1]
    gone = await reseed_guest(tmp_path / "missing.sock")
    assert gone is not None and gone.startswith("no RNG agent on")


async def test_a_silent_agent_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    path = tmp_path / "agent.sock"
    async with await asyncio.start_unix_server(silent, str(path)):
        assert await reseed_guest(path, timeout=0.3) == \
            "the guest's RNG agent did not answer within 0.3 s"
