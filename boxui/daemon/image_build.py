"""`boxui image build` through the daemon: post the build, follow its NDJSON progress,
return its result. Ctrl-C closes the connection, which cancels the build in the daemon
(and a cancelled build leaves no image)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from pydantic import ValidationError

from backend.api.image_models import ImageBuildLine, ImageBuildResult
from backend.errors import BoxuiError
from boxui.daemon.client import (
    BASE_URL,
    TIMEOUT,
    ApiCallError,
    DaemonClient,
    read_answer,
    unreachable,
)

BUILDS_PATH = "/v1/images/builds"


def build_via_api(client: DaemonClient, name: str,
                  progress: Callable[[ImageBuildLine], None]) -> ImageBuildResult:
    transport = httpx.HTTPTransport(uds=str(client.socket_path))
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT) as http, \
                http.stream("POST", BUILDS_PATH, json={"name": name}) as response:
            if response.status_code >= 400:
                response.read()
                read_answer(response)  # raises the daemon's error
            for raw in response.iter_lines():
                if raw.strip() and (result := _follow(raw, progress)) is not None:
                    return result
    except httpx.ConnectError as exc:
        raise unreachable(client.pid, client.socket_path, exc) from None
    except httpx.TransportError as exc:
        raise BoxuiError(f"the boxui daemon (pid {client.pid}) broke off the image "
                         f"build: {exc}") from None
    raise BoxuiError(f"the boxui daemon (pid {client.pid}) ended the image build without "
                     "a result; see its log")


def _follow(raw: str, progress: Callable[[ImageBuildLine], None]) -> ImageBuildResult | None:
    try:
        line = ImageBuildLine.model_validate_json(raw)
    except ValidationError:
        raise BoxuiError(f"the boxui daemon sent a build line this boxui cannot read: "
                         f"{raw[:200]}") from None
    if line.type == "result" and line.result is not None:
        return line.result
    if line.type == "error":
        raise ApiCallError(line.code or "error", line.message or "the image build failed")
    progress(line)
    return None
