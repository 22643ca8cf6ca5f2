"""The daemon's kept SSH connections: reused, one per machine, reopened when dropped,
closed when the machine goes. Against an in-process SSH server with the machine's own
host key (as in test_ssh_access), which can be "restarted" like a guest's sshd."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from backend.guest.machine_seed import MachineKeys, create_machine_keys
from backend.state.engine import Engine
from backend.state.lifecycle import Verb
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.machine_exec import DeadlineKillError, MachineExec
from backend.supervision.ssh_access import SshError
from backend.supervision.ssh_pool import SshPool
from tests.conftest import spec
from tests.test_ssh_access import FakeGuest, _handle, dropbear_host_key


@dataclass
class Sshd:
    """An SSH server that can be stopped and started again on the same port, dropping
    every connection like a guest's sshd being restarted."""

    keys: MachineKeys
    port: int = 0
    guest: FakeGuest = field(default_factory=lambda: FakeGuest(port=0))
    accepted: int = 0
    live: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    server: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        self.server = await asyncssh.listen(
            "127.0.0.1", self.port,
            server_host_keys=[dropbear_host_key(self.keys)],
            authorized_client_keys=asyncssh.import_authorized_keys(
                self.keys.client_public.read_text()),
            process_factory=lambda process: _handle(self.guest, process),
            server_factory=lambda: _Counted(self), encoding=None, config=None)
        self.port = self.guest.port = self.server.get_port()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)
        for conn in list(self.live):
            conn.close()
            await asyncio.wait_for(conn.wait_closed(), 5)

    def open_connections(self) -> int:
        return len(self.live)


class _Counted(asyncssh.SSHServer):
    """Keeps `Sshd.live` to the connections the server side still has open."""

    def __init__(self, sshd: Sshd) -> None:
        self.sshd = sshd
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.sshd.accepted += 1
        self.sshd.live.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.sshd.live.discard(self.conn)


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[Sshd]:
    server = Sshd(create_machine_keys(tmp_path / "web"))
    await server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            await server.stop()


async def run(pool: SshPool, sshd: Sshd, argv: list[str], name: str = "web",
              stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    machine_dir = sshd.keys.client_key.parent
    code = await pool.exec(name, sshd.port, machine_dir, lambda: sshd.keys, argv, out, err,
                           stdin=stdin, timeout=5)
    return code, out.getvalue(), err.getvalue()


async def until(condition: object, timeout: float = 5) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_commands_share_one_connection(sshd: Sshd) -> None:
    pool = SshPool(connect_timeout=5)
    try:
        for n in range(5):
            assert await run(pool, sshd, ["exit", str(n)]) == (n, b"", b"")
        assert await run(pool, sshd, ["cat"], stdin=b"data") == (0, b"data", b"")
        assert (pool.connects, sshd.accepted, len(pool)) == (1, 1, 1)
    finally:
        await pool.aclose()


async def test_concurrent_first_commands_make_one_handshake(sshd: Sshd) -> None:
    pool = SshPool(connect_timeout=5)
    try:
        results = await asyncio.gather(*(run(pool, sshd, ["echo", str(n)]) for n in range(20)))
        assert [r[1] for r in results] == [f"{n}\n".encode() for n in range(20)]
        assert (pool.connects, sshd.accepted) == (1, 1)
    finally:
        await pool.aclose()


async def test_a_restarted_sshd_is_reconnected_transparently(sshd: Sshd) -> None:
    pool = SshPool(connect_timeout=5)
    try:
        assert (await run(pool, sshd, ["echo", "before"]))[1] == b"before\n"
        await sshd.stop()
        await until(lambda: len(pool) == 0)  # told by the connection, not found out later
        await sshd.start()
        assert (await run(pool, sshd, ["echo", "after"]))[1] == b"after\n"
        assert (pool.connects, sshd.accepted) == (2, 2)
    finally:
        await pool.aclose()


async def test_a_connection_dropped_unnoticed_is_replaced_and_the_command_runs_once(
    sshd: Sshd,
) -> None:
    pool = SshPool(connect_timeout=5)
    try:
        await run(pool, sshd, ["exit", "0"])
        for conn in list(sshd.live):
            conn.abort()  # no yield to the loop: the pool has not been told yet
        assert len(pool) == 1
        assert await run(pool, sshd, ["echo", "again"]) == (0, b"again\n", b"")
        assert sshd.guest.commands.count("echo again") == 1
        assert pool.connects == 2
    finally:
        await pool.aclose()


async def test_connections_are_bounded_as_machines_come_and_go(sshd: Sshd) -> None:
    pool = SshPool(connect_timeout=5)
    try:
        for round_ in range(3):
            names = [f"m{round_}-{n}" for n in range(10)]
            await asyncio.gather(*(run(pool, sshd, ["exit", "0"], name=n) for n in names))
            assert len(pool) == 10
            for n in names:
                await run(pool, sshd, ["exit", "0"], name=n)  # reused, not reopened
            assert pool.connects == 10 * (round_ + 1)
            for n in names:
                pool.forget(n)  # stopped or deleted
            assert len(pool) == 0
            await until(lambda: sshd.open_connections() == 0)
    finally:
        await pool.aclose()


async def test_a_new_port_means_a_new_connection(sshd: Sshd, tmp_path: Path) -> None:
    other = Sshd(sshd.keys)
    await other.start()
    pool = SshPool(connect_timeout=5)
    try:
        await run(pool, sshd, ["exit", "0"])
        assert await run(pool, other, ["echo", "moved"]) == (0, b"moved\n", b"")
        assert len(pool) == 1 and pool.connects == 2
        await until(lambda: sshd.open_connections() == 0)
    finally:
        await pool.aclose()
        await other.stop()


async def test_a_refused_connection_is_an_error_and_keeps_nothing(sshd: Sshd) -> None:
    await sshd.stop()
    pool = SshPool(connect_timeout=2)
    with pytest.raises(SshError, match="refused"):
        await run(pool, sshd, ["exit", "0"])
    assert len(pool) == 0


async def test_aclose_closes_every_connection(sshd: Sshd) -> None:
    pool = SshPool(connect_timeout=5)
    await asyncio.gather(*(run(pool, sshd, ["exit", "0"], name=f"m{n}") for n in range(3)))
    await pool.aclose()
    assert len(pool) == 0
    await until(lambda: sshd.open_connections() == 0)


# --- MachineExec: the daemon's exec over the pool, closed as machines stop ---------------


async def test_machine_exec_reuses_and_closes_on_stop(engine: Engine, tmp_path: Path) -> None:
    """The product runner end to end: state checks, the kept connection, and the
    connection closed by the machine's `stopping` event, with nothing left after."""
    await engine.create_machine(spec("web"))
    keys = create_machine_keys(engine.dirs.machine_dir("web"))
    server = Sshd(keys)
    await server.start()
    machine_exec = MachineExec(engine)
    keeper = asyncio.create_task(machine_exec.keep_connections())

    def set_port(record: RuntimeRecord) -> None:
        record.ssh_port = server.port

    try:
        await engine.transition("web", Verb.BOOTING, update=set_port)
        await engine.transition("web", Verb.READY)
        for word in ("one", "two", "three"):
            _, output = await machine_exec.run("web", ["echo", word], timeout=5)
            assert (output.exit_code, output.stdout) == (0, word.encode() + b"\n")
        assert machine_exec.pool.connects == 1 and server.open_connections() == 1
        await engine.transition("web", Verb.STOPPING)
        await until(lambda: len(machine_exec.pool) == 0)
        await until(lambda: server.open_connections() == 0)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(keeper, 10)
        await server.stop()


async def test_a_deadline_kills_the_marked_command_on_a_second_channel(
        engine: Engine) -> None:
    """The product runner: the command goes out marked with its id, and at its deadline
    the kill script for that id runs on a channel of its own; the record says expired."""
    await engine.create_machine(spec("web"))
    server = Sshd(create_machine_keys(engine.dirs.machine_dir("web")))
    await server.start()
    machine_exec = MachineExec(engine)
    try:
        await engine.transition("web", Verb.BOOTING,
                                update=lambda r: setattr(r, "ssh_port", server.port))
        await engine.transition("web", Verb.READY)
        with pytest.raises(DeadlineKillError, match="killed in the guest"):
            await machine_exec.run("web", ["sleep", "30"], timeout=0.5)
        [record] = machine_exec.registry.commands("web")
        assert server.guest.killed == [record.id] and not server.guest.marked
        assert record.state == "expired"
        assert record.error == "deadline of 0.5 s passed; killed in the guest (1 processes)"
        assert server.guest.commands[0] == f"export BOXUI_COMMAND={record.id}; sleep 30"
        _, output = await machine_exec.run("web", ["echo", "after"], timeout=5)
        assert output.stdout == b"after\n"  # the connection still serves
    finally:
        await machine_exec.pool.aclose()
        await server.stop()


async def test_keep_connections_closes_all_when_cancelled(engine: Engine, sshd: Sshd) -> None:
    machine_exec = MachineExec(engine)
    keeper = asyncio.create_task(machine_exec.keep_connections())
    await asyncio.gather(*(run(machine_exec.pool, sshd, ["exit", "0"], name=f"m{n}")
                           for n in range(3)))
    assert sshd.open_connections() == 3
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(keeper, 10)
    assert len(machine_exec.pool) == 0
    await until(lambda: sshd.open_connections() == 0)
