"""Talking to a running `boxui daemon` through its API (httpx over the unix socket).

The CLI asks here first: if a supervisor holds the state dir and serves the API, changes
go through it (it owns the VMs); otherwise the CLI acts itself under the lock. The app's
remote backend speaks the same API asynchronously and reads answers the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class ApiCallError(BoxuiError):
    """An error the daemon answered with; `code` is the API's stable code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def unreachable(pid: int | None, socket_path: Path, exc: Exception) -> BoxuiError:
    return BoxuiError(f"the boxui daemon (pid {pid}) does not answer on "
                      f"{socket_path}: {exc}")


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
    def __init__(self, socket_path: Path, pid: int | None) -> None:
        self.socket_path = socket_path
        self.pid = pid
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
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise unreachable(self.pid, self.socket_path, exc) from None
        return read_answer(response, also_ok)


def serving_daemon(dirs: StateDir) -> int | None:
    """The pid of the daemon serving this state dir's API, or None when none does.

    A supervisor that serves no API (a CLI command acting under the lock) is not a
    daemon here: the direct path then reports that the state dir is in use, naming its
    pid.
    """
    holder = lock_holder(dirs.lock_file)
    if holder is None or not dirs.api_socket.exists():
        return None
    return holder


def find_daemon(home: Path | None = None) -> DaemonClient | None:
    """A client for the daemon serving this state dir, or None when none runs."""
    dirs = open_state_dir(home)
    pid = serving_daemon(dirs)
    return None if pid is None else DaemonClient(dirs.api_socket, pid)
