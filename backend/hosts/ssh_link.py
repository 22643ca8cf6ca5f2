"""One SSH connection to a host, with asyncssh: `~/.ssh/config`, the agent and
`known_hosts` are honoured as `ssh` would, and a host key that is not pinned there is
refused, never accepted on first sight.

Every way a connection can fail is a one-line `HostUnreachableError` or
`HostKeyRefusedError` naming the host: the CLI prints it as it is, the app shows it as
the reason a host's machines are `unknown`.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from dataclasses import dataclass
from typing import Any

import asyncssh

from backend.errors import BoxuiError
from backend.hosts.address import parse_ssh_address
from backend.hosts.registry import HostDef

#: a host that has not answered the SSH handshake by then is unreachable
CONNECT_TIMEOUT = 5.0


class HostUnreachableError(BoxuiError):
    code = "unreachable"


class HostKeyRefusedError(BoxuiError):
    code = "host_key_refused"


@dataclass(frozen=True)
class RemoteResult:
    exit_status: int
    stdout: str
    stderr: str


def connect_options(host: HostDef) -> dict[str, Any]:
    """asyncssh's options for `host`: only what the definition says; the rest (user,
    port, keys, known_hosts) comes from `~/.ssh/config` and the defaults, as with ssh."""
    address = parse_ssh_address(host.address)
    options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "keepalive_interval": 1,
                               "keepalive_count_max": 2}
    if address.user:
        options["username"] = address.user
    if address.port:
        options["port"] = address.port
    if host.identity:
        options["client_keys"] = [host.identity]
    return options


async def open_connection(host: HostDef) -> asyncssh.SSHClientConnection:
    address = parse_ssh_address(host.address)
    where = f"host {host.name} ({address})"
    try:
        return await asyncssh.connect(address.host, **connect_options(host))
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyRefusedError(
            f"{where}: its host key is not the one pinned in known_hosts ({exc.reason}); "
            "refused. Check the key, then pin it (connect once with ssh)") from None
    except asyncssh.PermissionDenied as exc:
        raise HostUnreachableError(f"{where} refused the login: {exc.reason}") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or (
            str(exc) or type(exc).__name__)
        raise HostUnreachableError(f"{where} is unreachable: {reason}") from None


class SshLink:
    """A kept connection, opened on first use and again after it drops."""

    def __init__(self, host: HostDef) -> None:
        self.host = host
        self._conn: asyncssh.SSHClientConnection | None = None

    async def connection(self) -> asyncssh.SSHClientConnection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await open_connection(self.host)
        return self._conn

    async def run(self, argv: list[str], timeout: float = 30.0) -> RemoteResult:
        """`argv` on the host; SSH carries a command line, so it is quoted for the
        remote shell here, one word per argument."""
        conn = await self.connection()
        try:
            done = await asyncio.wait_for(
                conn.run(shlex.join(argv), check=False, stdin=asyncssh.DEVNULL), timeout)
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachableError(f"host {self.host.name}: the connection dropped: "
                                       f"{getattr(exc, 'reason', exc)}") from None
        except TimeoutError:
            raise HostUnreachableError(f"host {self.host.name} did not answer within "
                                       f"{timeout:.0f} s") from None
        return RemoteResult(_status(done.exit_status), _text(done.stdout),
                            _text(done.stderr))

    async def latency(self) -> float:
        """Seconds for one round trip on the connection (an SSH keepalive request)."""
        conn = await self.connection()
        started = time.monotonic()
        await conn.run("true", check=False, stdin=asyncssh.DEVNULL)
        return time.monotonic() - started

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None


def _status(value: object) -> int:
    return value if isinstance(value, int) else 255


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""
