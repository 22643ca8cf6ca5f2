"""`boxui template build` through the daemon: post the build, show its progress as it
streams, return its result.

The daemon may not see the file the user named (another working directory, a mount
namespace), so the CLI reads it and sends its text; an id names a template the state dir
already holds. Interrupting the CLI (Ctrl-C) closes the connection, which cancels the
build in the daemon: nothing is published.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from backend.api.template_models import TemplateBuildLine
from backend.errors import BoxuiError
from backend.state.state_dir import open_state_dir
from backend.template_builds.from_source import read_source
from backend.template_builds.runs import BuildSource, checked, stored_source
from boxui.daemon.client import (
    BASE_URL,
    TIMEOUT,
    ApiCallError,
    DaemonClient,
    read_answer,
    unreachable,
)

BUILDS_PATH = "/v1/templates/builds"


def build_request(source: str, *, snapshot: bool) -> dict[str, object]:
    """A file is sent as its text (named as the user gave it, for messages); anything
    else is taken as a template id, as `from_source.locate_source` does."""
    path = Path(source)
    if path.is_file():
        return {"text": read_source(path), "file_name": source, "snapshot": snapshot}
    return {"template_id": source, "snapshot": snapshot}


def check_request(source: str, body: dict[str, object]) -> None:
    """Refuse a template that is not valid, or an id the state dir does not hold, here:
    bad input must not start a daemon (the daemon checks again)."""
    if isinstance(body.get("text"), str):
        checked(BuildSource(str(body["text"]), Path(source)))
    else:
        checked(stored_source(open_state_dir(), source))


def build_via_api(client: DaemonClient, source: str, *, snapshot: bool,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """The build's result as `template build --json` prints it; a build that fails or
    is refused raises its one-line error."""
    body = build_request(source, snapshot=snapshot)
    check_request(source, body)
    transport = httpx.HTTPTransport(uds=str(client.socket_path))
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT) as http, \
                http.stream("POST", BUILDS_PATH, json=body) as response:
            if response.status_code >= 400:
                response.read()
                read_answer(response)  # raises the daemon's error
            for raw in response.iter_lines():
                if raw.strip() and (result := _follow(raw, progress)) is not None:
                    return result
    except httpx.ConnectError as exc:
        raise unreachable(client.pid, client.socket_path, exc) from None
    except httpx.TransportError as exc:
        raise BoxuiError(f"the boxui daemon (pid {client.pid}) broke off the template "
                         f"build: {exc}") from None
    raise BoxuiError(f"the boxui daemon (pid {client.pid}) ended the template build "
                     "without a result; see its log")


def _follow(raw: str, progress: Callable[[str], None]) -> dict[str, Any] | None:
    try:
        line = TemplateBuildLine.model_validate_json(raw)
    except ValidationError:
        raise BoxuiError(f"the boxui daemon sent a build line this boxui cannot read: "
                         f"{raw[:200]}") from None
    if line.type == "result" and line.result is not None:
        return line.result.model_dump(mode="json")
    if line.type == "error":
        raise ApiCallError(line.code or "error", line.message or "the template build failed")
    if line.message is not None:
        progress(line.message)
    return None
