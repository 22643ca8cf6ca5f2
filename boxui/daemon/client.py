"""Talking to a running `boxui daemon` through its API (httpx over the unix socket).

Every CLI command that changes something goes through here (`spawn.ensure_daemon` starts
a daemon first when none serves the state dir). The app's remote backend speaks the same
API asynchronously and reads answers the same way.

A changing request carries an `Idempotency-Key`: when the connection drops before the
answer, the request is sent once more with the same key, and the daemon answers a
request it already carried out with its first answer instead of acting twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from backend.errors import BoxuiError
from backend.state.state_dir import StateDir, open_state_dir
from backend.state.supervisor_lock import lock_holder

#: what a query parameter of the API can be (all of them are flags, names or numbers)
QueryParams = Mapping[str, str | int | float | bool | None]

#: no overall timeout: booting a guest under TCG can take minutes
TIMEOUT = httpx.Timeout(None, connect=5)
BASE_URL = "http://boxui"
SAFE_METHODS = frozenset({"GET", "HEAD"})


class ApiCallError(BoxuiError):
    """An error the daemon answered with; `code` is the API's stable code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def unreachable(pid: int | None, socket_path: Path, exc: Exception,
                where: str | None = None) -> BoxuiError:
    on = f"on {where} (through SSH)" if where else f"on {socket_path}"
    return BoxuiError(f"the boxui daemon (pid {pid}) does not answer {on}: "
                      f"{exc or type(exc).__name__}")


def went_away(pid: int | None, exc: Exception) -> BoxuiError:
    return BoxuiError(f"the boxui daemon (pid {pid}) went away before answering "
                      f"({exc or type(exc).__name__}); the request may or may not have "
                      "been carried out: check with `boxui ls`")


def read_answer(response: httpx.Response, also_ok: Sequence[int] = ()) -> Any:
    """The answer's JSON (None when it has no body), or the daemon's error raised as
    `ApiCallError`; an error the API did not shape (a proxy, a crash) is a `BoxuiError`.
    `Any` because it is JSON as the daemon sent it: callers validate it into models."""
    if response.status_code >= 400 and response.status_code not in also_ok:
        try:
            body = response.json()
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            raise BoxuiError(f"the boxui daemon answered {response.status_code}: "
                             f"{response.text[:200]}") from None
        raise ApiCallError(code, message)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


class DaemonClient:
    """`reconnect`: how to reach a daemon again when this one refuses the connection (it
    was exiting, idle, just then); nothing was sent, so asking the next one is safe.
    `where`: the host, when the socket is a remote daemon's forwarded through SSH."""

    def __init__(self, socket_path: Path, pid: int | None,
                 reconnect: Callable[[], DaemonClient] | None = None, *,
                 where: str | None = None) -> None:
        self.socket_path = socket_path
        self.pid = pid
        self.where = where
        self._reconnect = reconnect
        transport = httpx.HTTPTransport(uds=str(socket_path))
        self._http = httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, *, json: object = None,
             params: QueryParams | None = None, also_ok: tuple[int, ...] = ()) -> Any:
        headers = {} if method in SAFE_METHODS else {"Idempotency-Key": str(uuid.uuid4())}
        try:
            response = self._send(method, path, json, params, headers)
        except httpx.ConnectError as exc:
            if self._reconnect is None:
                raise unreachable(self.pid, self.socket_path, exc, self.where) from None
            with self._reconnect() as other:
                response = other._send(method, path, json, params, headers)
        return read_answer(response, also_ok)

    def _send(self, method: str, path: str, json: object, params: QueryParams | None,
              headers: dict[str, str]) -> httpx.Response:
        """One request; sent again once, with the same key, if the connection drops
        before the answer (a connection never made raises `httpx.ConnectError`)."""
        try:
            return self._http.request(method, path, json=json, params=params,
                                      headers=headers)
        except httpx.ConnectError:
            raise
        except httpx.TransportError:
            pass  # dropped before the answer: once more, with the same key
        try:
            return self._http.request(method, path, json=json, params=params,
                                      headers=headers)
        except httpx.TransportError as exc:
            raise went_away(self.pid, exc) from None


def serving_daemon(dirs: StateDir) -> int | None:
    """The pid of the supervisor (a daemon, or the app) serving this state dir's API, or
    None when none does. One that holds the lock but serves no API (yet) is not one."""
    holder = lock_holder(dirs.lock_file)
    if holder is None or not dirs.api_socket.exists():
        return None
    return holder


def find_daemon(home: Path | None = None) -> DaemonClient | None:
    """A client for the daemon serving this state dir, or None when none runs."""
    dirs = open_state_dir(home)
    pid = serving_daemon(dirs)
    return None if pid is None else DaemonClient(dirs.api_socket, pid)
