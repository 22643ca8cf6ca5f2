"""Following a build the daemon streams as NDJSON (templates, images): post it, hand each
progress line on, return the result line. Closing the connection (Ctrl-C) cancels the
build in the daemon."""

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


def stream_build(client: DaemonClient, path: str, body: dict[str, object], what: str,
                 line_model: type[L], result_of: Callable[[L], R | None],
                 progress: Callable[[L], None]) -> R:
    """The build's result (`result_of` a line, None until the result line); a build that
    fails or is refused raises its one-line error, naming `what` was built."""
    transport = httpx.HTTPTransport(uds=str(client.socket_path))
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT) as http, \
                http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                response.read()
                read_answer(response)  # raises the daemon's error
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                line = _read_line(raw, line_model)
                result = result_of(line)
                if result is not None:
                    return result
                _raise_if_error(line, what)
                progress(line)
    except httpx.ConnectError as exc:
        raise unreachable(client.pid, client.socket_path, exc) from None
    except httpx.TransportError as exc:
        raise BoxuiError(f"the boxui daemon (pid {client.pid}) broke off the {what} "
                         f"build: {exc}") from None
    raise BoxuiError(f"the boxui daemon (pid {client.pid}) ended the {what} build without "
                     "a result; see its log")


def _read_line(raw: str, line_model: type[L]) -> L:
    try:
        return line_model.model_validate_json(raw)
    except ValidationError:
        raise BoxuiError(f"the boxui daemon sent a build line this boxui cannot read: "
                         f"{raw[:200]}") from None


def _raise_if_error(line: BaseModel, what: str) -> None:
    if getattr(line, "type", None) == "error":
        raise ApiCallError(getattr(line, "code", None) or "error",
                           getattr(line, "message", None) or f"the {what} build failed")
