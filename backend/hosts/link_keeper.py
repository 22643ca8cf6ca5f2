"""The keeper: one process per remote boxui host holding its SSH connection between CLI
calls (`backend.hosts.kept_link` says why and what it serves; this is its server).

    python -m backend.hosts.link_keeper LINK_DIR HOST_JSON IDLE READY_FD

It says `ok` (or `error CODE MESSAGE`) on READY_FD once it serves, so the CLI that
started it is told rather than polling for the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import asyncssh

from backend.errors import BoxuiError
from backend.hosts.kept_link import ERR, EXIT, FAIL, OUT, write_frame
from backend.hosts.registry import HostDef
from backend.hosts.remote_boxui import find_endpoint
from backend.hosts.ssh_link import SshLink
from backend.hosts.staging import Transfers


class Keeper:
    """The kept connection and the two sockets it serves, until idle or dropped."""

    def __init__(self, link_dir: Path, host: HostDef, idle: float) -> None:
        self.dir, self.host, self.idle = link_dir, host, idle
        self.link = SshLink(host)
        self.target: str | None = None  # the remote API socket, once asked for
        self.clients = 0
        self.transfers = Transfers()
        self.done = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None

    def _busy(self) -> None:
        self.clients += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _free(self) -> None:
        self.clients -= 1
        if self.clients == 0:
            self._idle_timer = asyncio.get_running_loop().call_later(self.idle, self.done.set)

    async def serve(self, ready_fd: int) -> None:
        try:
            conn = await self.link.connection()
        except BoxuiError as exc:
            os.write(ready_fd, f"error {exc.code} {exc}\n".encode())
            return
        for name in ("ctl.sock", "api.sock"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
        ctl = await asyncio.start_unix_server(self._control, str(self.dir / "ctl.sock"))
        api = await asyncio.start_unix_server(self._forward, str(self.dir / "api.sock"))
        for name in ("ctl.sock", "api.sock"):
            os.chmod(self.dir / name, 0o600)
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
        self.clients = 1
        self._free()  # idle from the start until the first client
        dropped = asyncio.ensure_future(conn.wait_closed())
        done = asyncio.ensure_future(self.done.wait())
        await asyncio.wait([dropped, done], return_when=asyncio.FIRST_COMPLETED)
        for server in (ctl, api):
            server.close()  # the sockets go first: a late client meets none, and starts one
        for task in (dropped, done):
            task.cancel()
        await self.link.close()

    async def _control(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        self._busy()
        try:
            asked = json.loads(await reader.readline() or b"{}")
            if asked.get("op") == "run":
                await self._run(list(asked["argv"]), reader, writer)
            elif asked.get("op") == "endpoint":
                await self._endpoint(asked.get("remembered"), writer)
            elif asked.get("op") == "stage":
                await self._stage(asked, reader, writer)
            elif asked.get("op") == "exit":
                self.done.set()
        except BoxuiError as exc:
            writer.write(write_frame(FAIL, json.dumps({"code": exc.code,
                                                       "error": str(exc)}).encode()))
        except (OSError, ValueError, KeyError, asyncio.IncompleteReadError):
            pass  # the client went away, or asked nonsense: nothing to answer
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
                writer.close()
            self._free()

    async def _endpoint(self, remembered: str | None, writer: asyncio.StreamWriter) -> None:
        found = await find_endpoint(self.link, Path(remembered) if remembered else None)
        self.target = found.socket
        writer.write(write_frame(EXIT, json.dumps({
            "socket": found.socket, "pid": found.pid, "started": found.started,
            "api": str(self.dir / "api.sock")}).encode()))

    async def _stage(self, asked: dict[str, Any], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        """A staging request (`backend.hosts.staging`); the client closing its end (a
        Ctrl-C) cancels it, so its stage can be removed at once."""
        work: asyncio.Future[object] = asyncio.ensure_future(
            self.transfers.handle(self.link, asked))
        gone: asyncio.Future[object] = asyncio.ensure_future(reader.read())
        await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return
        gone.cancel()
        writer.write(write_frame(EXIT, json.dumps(work.result()).encode()))

    async def _run(self, argv: list[str], reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        """`argv` there, streamed back; the client closing its end stops it."""
        conn = await self.link.connection()
        try:
            process = await conn.create_process(shlex.join(argv), stdin=asyncssh.DEVNULL,
                                                encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise BoxuiError(f"host {self.host.name}: the connection dropped: "
                             f"{getattr(exc, 'reason', exc)}") from None

        async def copy(source: asyncssh.SSHReader[bytes], tag: bytes) -> None:
            while chunk := await source.read(65536):
                writer.write(write_frame(tag, chunk))
                await writer.drain()

        streams: asyncio.Future[object] = asyncio.ensure_future(asyncio.gather(
            copy(process.stdout, OUT), copy(process.stderr, ERR)))
        gone: asyncio.Future[object] = asyncio.ensure_future(reader.read())  # EOF: CLI gone
        await asyncio.wait([streams, gone], return_when=asyncio.FIRST_COMPLETED)
        if not streams.done():
            process.close()
            streams.cancel()
            return
        gone.cancel()
        await process.wait_closed()
        status = process.exit_status
        writer.write(write_frame(EXIT, json.dumps(
            {"status": status if isinstance(status, int) else 255}).encode()))

    async def _forward(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        """One local API connection, on a channel to the remote API socket."""
        self._busy()
        try:
            if self.target is None:
                return  # nothing asked for the endpoint yet: a client's bug
            conn = await self.link.connection()
            remote_reader, remote_writer = await conn.open_unix_connection(self.target)
            await asyncio.gather(_pipe(reader, remote_writer), _pipe(remote_reader, writer))
        except (OSError, asyncssh.Error, BoxuiError):
            pass  # the client sees its connection closed, as with a daemon gone
        finally:
            writer.close()
            self._free()


async def _pipe(source: asyncssh.SSHReader[bytes] | asyncio.StreamReader,
                sink: asyncssh.SSHWriter[bytes] | asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    finally:
        with contextlib.suppress(OSError, asyncssh.Error):
            sink.write_eof()


def main(argv: list[str]) -> None:
    link_dir, host_json, idle, ready = argv
    ready_fd = int(ready)
    lock_fd = os.open(Path(link_dir) / "keeper.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                      0o600)
    # held for life: one keeper per dir. Its spawner found no socket answering, so one
    # holding it now is on its way out (its sockets closed first): this waits for that
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())  # who serves: for `ps` and the tests
    host = HostDef.model_validate(json.loads(host_json))
    asyncio.run(Keeper(Path(link_dir), host, float(idle)).serve(ready_fd))


if __name__ == "__main__":
    main(sys.argv[1:])
