"""The guest's restore agent (a hand-made ELF) and its host end, without a VM."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
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
from tests.templates.agent_sandbox import STEPS, sandbox_problem, start_fenced


def test_agent_is_a_small_static_elf() -> None:
    program = agent_program()
    assert program[:4] == b"\x7fELF" and len(program) < 1024
    entry = struct.unpack_from("<Q", program, 24)[0]
    assert 0x400000 < entry < 0x400000 + len(program)
    assert GUEST_PORT.encode() + b"\0" in program


@pytest.fixture(scope="module")
def fenced() -> None:
    problem = sandbox_problem()
    if problem is not None:
        pytest.skip(f"cannot fence the agent off from this host: {problem}")


def read_answer(fd: int, timeout: float = 5) -> bytes:
    """The agent's one-byte answer; b"" if none came (reading would block for ever)."""
    readable, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1) if readable else b""


@pytest.mark.usefixtures("fenced")
@pytest.mark.parametrize("failing", [None, *STEPS])
def test_agent_freshens_the_guest_from_bytes_sent_down_its_port(
        tmp_path: Path, failing: str | None) -> None:
    """A FIFO stands in for the virtio-serial port. The agent runs fenced off from this
    host (how, and why not with a FIFO for its entropy device: agent_sandbox.py): a
    seccomp filter answers the RNG ioctls and clock_settime() without reaching the
    kernel, which in the agent's user namespace would refuse them anyway, so this host's
    entropy pool and clock are never touched; the hostname is set for real, in a UTS
    namespace of its own. Each step that fails is reported by its status, and the steps
    after it are not tried. The real ioctls and clock run in a guest, in
    test_snapshot_restore_vm.py."""
    host_name = socket.gethostname()
    port = tmp_path / "port"
    os.mkfifo(port)
    program = tmp_path / "agent"
    program.write_bytes(agent_program(str(port)))
    program.chmod(0o700)
    fd = os.open(port, os.O_RDWR)
    agent = start_fenced(program, failing)
    try:
        message = agent_message(os.urandom(ENTROPY_BYTES), time.time_ns(), "c1")
        os.write(fd, message[:40])  # arrives in pieces, as a port may deliver it
        os.write(fd, message[40:ENTROPY_BYTES])
        time.sleep(0.1)
        assert agent.poll() is None, "the agent must wait for the whole message"
        os.write(fd, message[ENTROPY_BYTES:])
        shown, _ = agent.communicate(timeout=10)
        answer = read_answer(fd)
    finally:
        os.close(fd)
        agent.kill()
        agent.wait(10)
    expected = 0 if failing is None else 3 + STEPS.index(failing)
    assert (agent.returncode, answer) == (expected, str(expected).encode())
    assert shown.strip() == ("c1" if failing is None else host_name)  # in its namespace
    assert socket.gethostname() == host_name


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
