"""A remote boxui's control API, reached through SSH.

The remote boxui is asked, over the kept connection, for its API socket
(`boxui host endpoint --json`, which starts its daemon first as any changing command
does locally); that unix socket is then forwarded to one in a private directory here,
so the API client speaks to it exactly as to a local daemon.

The CLI is synchronous, so `ApiTunnel` keeps the SSH connection on an event loop of its
own in a thread for as long as the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from backend.errors import BoxuiError
from backend.hosts import kept_link
from backend.hosts.registry import HostDef
from backend.hosts.ssh_link import HostUnreachableError, SshLink
from backend.state.atomic_write import atomic_write_text
from backend.state.state_dir import StateDir, open_state_dir

T = TypeVar("T")

#: what the remote runs: its boxui, found on the login's PATH
REMOTE_BOXUI = "boxui"
ENDPOINT_ARGV = [REMOTE_BOXUI, "host", "endpoint", "--json"]
#: a remote daemon may have to start (and re-adopt its machines) before it answers
ENDPOINT_TIMEOUT = 90.0
INSTALL_HINT = ("install it there (git clone the boxui repository, run bin/setup, and put "
                "its .venv/bin on PATH), or add the host with --plain")


class RemoteBoxuiError(BoxuiError):
    code = "remote"


@dataclass(frozen=True)
class Endpoint:
    socket: str
    pid: int | None
    started: bool


async def remote_endpoint(link: SshLink) -> Endpoint:
    """The remote daemon's API socket, its daemon started first if none ran."""
    done = await link.run(ENDPOINT_ARGV, timeout=ENDPOINT_TIMEOUT)
    name = link.host.name
    if done.exit_status == 127:
        raise RemoteBoxuiError(f"host {name} has no boxui on its PATH: {INSTALL_HINT}")
    if done.exit_status != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1].removeprefix("boxui: ") if lines else f"exit {done.exit_status}"
        raise RemoteBoxuiError(f"host {name}: {why}")
    try:
        answer = json.loads(done.stdout)
        return Endpoint(str(answer["socket"]), answer.get("pid"), bool(answer["started"]))
    except (ValueError, KeyError, TypeError):
        raise RemoteBoxuiError(f"host {name}: its boxui answered something this boxui "
                               f"cannot read ({done.stdout[:80]!r}); is it too old?") from None


async def find_endpoint(link: SshLink, remembered: Path | None) -> Endpoint:
    """The remote API socket: `remembered`'s when a daemon still serves there (a channel
    opened to it, and closed: no remote boxui run), else the remote boxui's answer,
    then remembered."""
    known = _read_remembered(remembered)
    if known is not None:
        conn = await link.connection()
        try:
            _, writer = await conn.open_unix_connection(known)
        except (OSError, asyncssh.Error):
            pass  # no daemon serves there now: the remote boxui starts one
        else:
            writer.close()
            return Endpoint(known, None, False)
    endpoint = await remote_endpoint(link)
    if remembered is not None:
        with contextlib.suppress(OSError):
            atomic_write_text(remembered, endpoint.socket + "\n")
    return endpoint


def _read_remembered(remembered: Path | None) -> str | None:
    if remembered is None:
        return None
    try:
        text = remembered.read_text().strip()
    except OSError:
        return None
    return text if text.startswith("/") else None


class ApiTunnel:
    """The remote API forwarded to `socket_path` here, until `close`. `remembered`: a
    file keeping the remote's socket path between commands, so that a command whose
    remote daemon still serves there costs one SSH connection and no remote boxui run
    (it is checked first: a channel opened to it, and closed)."""

    def __init__(self, host: HostDef, remembered: Path | None = None) -> None:
        self.host = host
        self._remembered = remembered
        self._link = SshLink(host)
        self._dir = Path(tempfile.mkdtemp(prefix="boxui-host-"))  # 0700
        self.socket_path = self._dir / "api.sock"
        self.endpoint: Endpoint | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"ssh-{host.name}")
        self._thread.start()
        self._listener: Any = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def open(self) -> ApiTunnel:
        try:
            self.endpoint = self._call(self._endpoint())
            self._listener = self._call(self._forward(self.endpoint.socket))
        except BaseException:
            self.close()
            raise
        return self

    async def _endpoint(self) -> Endpoint:
        return await find_endpoint(self._link, self._remembered)

    async def _forward(self, remote_socket: str) -> Any:
        conn = await self._link.connection()
        try:
            return await conn.forward_local_path(str(self.socket_path), remote_socket)
        except OSError as exc:
            raise HostUnreachableError(f"host {self.host.name}: cannot forward its API "
                                       f"socket: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self._link.close()


class KeptTunnel:
    """The remote API through the host's keeper (`kept_link`): its forwarded socket
    outlives the command, so `close` has nothing to do."""

    def __init__(self, host: HostDef, dirs: StateDir, remembered: Path | None) -> None:
        answer = kept_link.endpoint(dirs, host, remembered)
        self.host = host
        self.endpoint: Endpoint | None = Endpoint(
            str(answer["socket"]), answer.get("pid"), bool(answer["started"]))
        self.socket_path = Path(answer["api"])

    def close(self) -> None:
        pass


def open_tunnel(host: HostDef, remembered: Path | None = None,
                dirs: StateDir | None = None) -> ApiTunnel | KeptTunnel:
    """A forwarded API socket for a remote boxui host (its daemon started if need be):
    the host's kept connection's, unless kept connections are off (then this command's
    own)."""
    if host.kind != "boxui":
        raise RemoteBoxuiError(f"host {host.name} is a {host.kind} host: it serves no boxui "
                               f"API" + (f" (boxui ssh {host.name} opens a session there)"
                                         if host.kind == "plain" else ""))
    if kept_link.idle_timeout() > 0:
        return KeptTunnel(host, dirs or open_state_dir(), remembered)
    return ApiTunnel(host, remembered).open()
