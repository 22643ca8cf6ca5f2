"""One authenticated SSH connection per running machine, kept open between commands.

A fresh SSH handshake (key exchange, host key check, public-key auth) costs far more than
a command like `true`; keeping the connection and opening a new channel per command
makes `exec` as cheap as OpenSSH's ControlMaster. The pool is bounded by construction:
at most one connection per machine name, dropped as soon as asyncssh tells us the
connection is gone (the guest stopped, its sshd restarted) or its owner forgets the
machine (stopped, deleted), so machines coming and going leave nothing behind.

A connection found dead when a command's channel cannot be opened is replaced and the
command tried once more on the new one: the channel never opened, so the command never
started and cannot run twice. A connection lost while a command runs is not retried (the
command may have run); that is reported as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from backend.guest.machine_seed import MachineKeys
from backend.supervision.ssh_access import (
    GUEST_CONNECT_TIMEOUT,
    ByteSink,
    SshChannelError,
    SshError,
    connect,
    run_on,
)

#: channels one connection carries at once; more wait (dropbear caps channels per session)
MAX_CHANNELS = 32

KeyLoader = Callable[[], MachineKeys]

# asyncssh logs five INFO lines for every channel (open, command, exit status, close):
# thousands of lines in the daemon's log for a loop of execs, each paid for in the
# command's time. Its warnings and errors still show.
logging.getLogger("asyncssh").setLevel(logging.WARNING)


@dataclass
class _Pooled:
    port: int
    conn: asyncssh.SSHClientConnection
    channels: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CHANNELS))


class _Watch(asyncssh.SSHClient):
    """Tells the pool when its connection drops, so a dead one is never handed out
    again and never lingers (asyncssh calls this on EOF, reset, or our own close)."""

    def __init__(self, on_lost: Callable[[asyncssh.SSHClientConnection], None]) -> None:
        self._on_lost = on_lost
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._on_lost(self._conn)


class SshPool:
    def __init__(self, *, connect_timeout: float = GUEST_CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self._pooled: dict[str, _Pooled] = {}
        self._pending: dict[str, tuple[int, asyncio.Future[_Pooled]]] = {}
        self.connects = 0  # handshakes made, for tests and benchmarks

    def __len__(self) -> int:
        return len(self._pooled)

    def names(self) -> list[str]:
        return sorted(self._pooled)

    async def exec(self, name: str, port: int, machine_dir: Path, keys: KeyLoader,
                   argv: list[str], stdout: ByteSink, stderr: ByteSink, *,
                   stdin: bytes | None = None, timeout: float | None = None,
                   marker: str | None = None) -> int:
        """Run `argv` in machine `name` on a channel of the machine's kept connection.

        `keys` is called only when a connection must be made (it reads files); `marker`:
        see `run_on`.
        """
        where = f"machine {name} at 127.0.0.1:{port}"
        for attempt in (1, 2):
            pooled = await self._connection(name, port, machine_dir, keys)
            async with pooled.channels:
                try:
                    return await run_on(pooled.conn, where, argv, stdout, stderr,
                                        stdin=stdin, timeout=timeout, marker=marker)
                except SshChannelError:
                    self._drop(name, pooled.conn)
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def _connection(self, name: str, port: int, machine_dir: Path,
                          keys: KeyLoader) -> _Pooled:
        pooled = self._pooled.get(name)
        if pooled is not None and pooled.port == port:
            return pooled
        if pooled is not None:  # the machine moved to another port: another boot
            self._drop(name, pooled.conn)
        pending = self._pending.get(name)
        if pending is None or pending[0] != port:
            # one handshake per machine, however many commands arrive meanwhile
            task = asyncio.ensure_future(self._open(name, port, machine_dir, keys))
            self._pending[name] = pending = (port, task)
            task.add_done_callback(lambda done: self._settled(name, done))
        # shielded: one waiter giving up must not abort the handshake the others share
        return await asyncio.shield(pending[1])

    def _settled(self, name: str, task: asyncio.Future[_Pooled]) -> None:
        pending = self._pending.get(name)
        if pending is not None and pending[1] is task:
            del self._pending[name]
        if not task.cancelled():
            task.exception()  # retrieved: waiters that gave up must not leave it unread

    async def _open(self, name: str, port: int, machine_dir: Path,
                    keys: KeyLoader) -> _Pooled:
        try:
            loaded = await asyncio.to_thread(keys)
        except (OSError, ValueError) as exc:
            raise SshError(f"{name}: cannot load its SSH keys: {exc}") from exc
        conn = await connect(port, loaded, machine_dir, connect_timeout=self.connect_timeout,
                             client_factory=lambda: _Watch(lambda c: self._drop(name, c)))
        self.connects += 1
        pooled = _Pooled(port, conn)
        previous = self._pooled.get(name)
        if previous is not None:
            self._drop(name, previous.conn)
        self._pooled[name] = pooled
        return pooled

    def _drop(self, name: str, conn: asyncssh.SSHClientConnection) -> None:
        """Forget `conn` (only if it is still the one kept for `name`, or for the name
        it was renamed to) and close it."""
        for kept in (name, *self._pooled):
            pooled = self._pooled.get(kept)
            if pooled is not None and pooled.conn is conn:
                del self._pooled[kept]
                break
        conn.close()

    def rename(self, old: str, new: str) -> None:
        """The connection kept for `old` is `new`'s from now on: a warm pool member's,
        whose handshake its claimer need not pay again (the same guest, keys and port)."""
        pooled = self._pooled.pop(old, None)
        if pooled is not None:
            self.forget(new)
            self._pooled[new] = pooled

    def forget(self, name: str) -> None:
        """Close the machine's connection: it stopped or is gone. Commands still running
        on it end with a lost-connection error (the guest is going away anyway)."""
        pooled = self._pooled.pop(name, None)
        if pooled is not None:
            pooled.conn.close()

    async def aclose(self) -> None:
        for _port, task in list(self._pending.values()):
            task.cancel()
        pooled = list(self._pooled.values())
        self._pooled.clear()
        for entry in pooled:
            entry.conn.close()
        for entry in pooled:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.conn.wait_closed(), 5)
