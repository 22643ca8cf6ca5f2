"""Talking to a running `boxui daemon` through its API (httpx over the unix socket).

The CLI asks here first: if a supervisor holds the state dir and serves the API, changes
go through it (it owns the VMs); otherwise the CLI acts itself under the lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from backend.errors import BoxuiError
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import lock_holder


class ApiCallError(BoxuiError):
    """An error the daemon answered with; `code` is the API's stable code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class DaemonClient:
    def __init__(self, socket_path: Path, pid: int | None) -> None:
        self.socket_path = socket_path
        self.pid = pid
        transport = httpx.HTTPTransport(uds=str(socket_path))
        # no overall timeout: booting a guest under TCG can take minutes
        self._http = httpx.Client(transport=transport, base_url="http://boxui",
                                  timeout=httpx.Timeout(None, connect=5))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None, also_ok: tuple[int, ...] = ()) -> Any:
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise BoxuiError(f"the boxui daemon (pid {self.pid}) does not answer on "
                             f"{self.socket_path}: {exc}") from None
        if response.status_code >= 400 and response.status_code not in also_ok:
            try:
                body = response.json()
                raise ApiCallError(str(body["code"]), str(body["message"]))
            except (ValueError, KeyError, TypeError):
                raise BoxuiError(f"the boxui daemon answered {response.status_code}: "
                                 f"{response.text[:200]}") from None
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def find_daemon(home: Path | None = None) -> DaemonClient | None:
    """A client for the daemon serving this state dir, or None when none runs.

    A supervisor without an API socket (an older daemon, the app) is not a daemon here:
    the direct path then reports that the state dir is in use, naming its pid.
    """
    dirs = open_state_dir(home)
    holder = lock_holder(dirs.lock_file)
    if holder is None or not dirs.api_socket.exists():
        return None
    return DaemonClient(dirs.api_socket, holder)
