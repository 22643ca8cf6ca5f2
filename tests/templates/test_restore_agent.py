"""The guest's restore agent (a hand-made ELF) and its host end, without a VM."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from backend.guest.restore_agent_elf import (
    ENTROPY_BYTES,
    GUEST_PORT,
    MESSAGE_BYTES,
    agent_message,
    agent_program,
)
from backend.supervision.restore_agent import NOT_REACHED, OLD_AGENT, Freshened, freshen_guest

CLOCK_MONOTONIC = 1  # clock_settime refuses it: the host's clock is never touched


def test_agent_is_a_small_static_elf() -> None:
    program = agent_program()
    assert program[:4] == b"\x7fELF" and len(program) < 1024
    entry = struct.unpack_from("<Q", program, 24)[0]
    assert 0x400000 < entry < 0x400000 + len(program)
    assert GUEST_PORT.encode() + b"\0" in program


def test_agent_reseeds_then_sets_the_clock_from_bytes_sent_down_its_port(
        tmp_path: Path) -> None:
    """A FIFO stands in for the virtio-serial port. As root the kernel accepts the
    entropy and reseeds, and the agent goes on to set its clock: here one that cannot
    be set, so it answers '5' and goes no further, leaving this host's hostname alone
    (in a guest all of it is done: the VM test checks that). Not as root, the kernel
    refuses RNDADDENTROPY ('3')."""
    port = tmp_path / "port"
    os.mkfifo(port)
    program = tmp_path / "agent"
    program.write_bytes(agent_program(str(port), clock=CLOCK_MONOTONIC))
    program.chmod(0o700)
    agent = subprocess.Popen([str(program)])
    fd = os.open(port, os.O_RDWR)
    try:
        message = agent_message(os.urandom(ENTROPY_BYTES), time.time_ns(), "c1")
        os.write(fd, message[:40])  # arrives in pieces, as a port may deliver it
        os.write(fd, message[40:ENTROPY_BYTES])
        time.sleep(0.1)
        assert agent.poll() is None, "the agent must wait for the whole message"
        os.write(fd, message[ENTROPY_BYTES:])
        status = agent.wait(timeout=10)
        answer = os.read(fd, 1)
    finally:
        os.close(fd)
        agent.kill()
    expected = 5 if os.geteuid() == 0 else 3
    assert (status, answer) == (expected, str(expected).encode())


async def _serve(tmp_path: Path, answers: list[bytes], expect: int,
                 received: list[bytes]) -> asyncio.Server:
    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readexactly(expect))
        writer.write(answers[len(received) - 1])
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(agent, str(tmp_path / "agent.sock"))


def test_the_message_lays_out_the_time_and_the_name() -> None:
    entropy = os.urandom(ENTROPY_BYTES)
    message = agent_message(entropy, 1_795_000_000_123_456_789, "build-7")
    assert len(message) == MESSAGE_BYTES and message[:ENTROPY_BYTES] == entropy
    assert struct.unpack_from("<qqQ", message, ENTROPY_BYTES) == \
        (1_795_000_000, 123_456_789, len("build-7"))
    assert message[88:] == b"build-7".ljust(64, b"\0")
    with pytest.raises(ValueError):
        agent_message(entropy, 0, "x" * 64)


async def test_host_end_sends_its_message_and_reads_which_step_failed(
        tmp_path: Path) -> None:
    received: list[bytes] = []
    path = tmp_path / "agent.sock"
    answers = [b"0", b"5", b"6", b"4"]
    async with await _serve(tmp_path, answers, MESSAGE_BYTES, received):
        before = time.time_ns()
        assert await freshen_guest(path, 2, "c1") == Freshened(None, None, None)
        after = time.time_ns()
        assert await freshen_guest(path, 2, "c1") == \
            Freshened(None, "the guest refused clock_settime", NOT_REACHED)
        assert await freshen_guest(path, 2, "c1") == \
            Freshened(None, None, "the guest refused sethostname")
        assert await freshen_guest(path, 2, "c1") == \
            Freshened("the guest refused RNDRESEEDCRNG", NOT_REACHED, NOT_REACHED)
    assert len(received) == 4 and received[0][:ENTROPY_BYTES] != received[1][:ENTROPY_BYTES]
    seconds, nanos = struct.unpack_from("<qq", received[0], ENTROPY_BYTES)
    assert before <= seconds * 1_000_000_000 + nanos <= after
    assert received[0][ENTROPY_BYTES + 16:] == agent_message(b"\0" * 64, 0, "c1")[80:]
    gone = await freshen_guest(tmp_path / "missing.sock", 2, "c1")
    assert gone.rng_problem is not None and gone.rng_problem.startswith("no agent on")
    assert gone.clock_problem == gone.name_problem == gone.rng_problem


async def test_an_old_agent_gets_entropy_only_and_the_rest_is_reported(
        tmp_path: Path) -> None:
    """Templates built before the agent set clocks and names read exactly 64 bytes."""
    received: list[bytes] = []
    async with await _serve(tmp_path, [b"0"], ENTROPY_BYTES, received):
        done = await freshen_guest(tmp_path / "agent.sock", 1, "c1")
    assert done == Freshened(None, OLD_AGENT, OLD_AGENT)
    assert [len(r) for r in received] == [ENTROPY_BYTES]


async def test_a_silent_agent_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    path = tmp_path / "agent.sock"
    async with await asyncio.start_unix_server(silent, str(path)):
        done = await freshen_guest(path, 2, "c1", timeout=0.3)
    assert done.rng_problem == "the guest's agent did not answer within 0.3 s"
    assert done.clock_problem == done.name_problem == done.rng_problem
