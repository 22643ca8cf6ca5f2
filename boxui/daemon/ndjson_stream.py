"""Following a request the daemon answers as NDJSON (builds, cells): post it, hand each
line on, return the result. Closing the connection (Ctrl-C) cancels the work in the
daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from backend.errors import BoxuiError
from boxui.daemon.client import (
    BASE_URL,
    TIMEOUT,
    ApiCallError,
    DaemonClient,
    read_answer,
    unreachable,
)

L = TypeVar("L", bound=BaseModel)
R = TypeVar("R")


def follow_ndjson(client: DaemonClient, path: str, body: dict[str, object], what: str,
                  line_model: type[L], handle: Callable[[L], R | None], *,
                  started: Callable[[httpx.Response], None] | None = None,
                  broken_hint: str = "", missing_hint: str = "see its log") -> R:
    """The result `handle` finds in a line (None until the result line); an `error`
    line raises its one-line error. `what` names the work in messages ("the cell");
    `started` sees the response before its first line (its headers)."""
    transport = httpx.HTTPTransport(uds=str(client.socket_path))
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT) as http, \
                http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                read_answer(response)  # raises the daemon's error
            if started is not None:
                started(response)
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                line = _read_line(raw, line_model, what)
                result = handle(line)
                if result is not None:
                    return result
                _raise_if_error(line, what)
    except httpx.ConnectError as exc:
        raise unreachable(client.pid, client.socket_path, exc) from None
    except httpx.TransportError as exc:
        raise BoxuiError(f"the boxui daemon (pid {client.pid}) broke off {what}: {exc}"
                         f"{broken_hint}") from None
    raise BoxuiError(f"the boxui daemon (pid {client.pid}) ended {what} without a result; "
                     f"{missing_hint}")


def _read_line(raw: str, line_model: type[L], what: str) -> L:
    try:
        return line_model.model_validate_json(raw)
    except ValidationError:
        raise BoxuiError(f"the boxui daemon sent a line of {what} this boxui cannot read: "
                         f"{raw[:200]}") from None


def _raise_if_error(line: BaseModel, what: str) -> None:
    if getattr(line, "type", None) == "error":
        raise ApiCallError(getattr(line, "code", None) or "error",
                           getattr(line, "message", None) or f"{what} failed")
