"""Following a build the daemon streams as NDJSON (templates, images): post it, hand each
progress line on, return the result line. Closing the connection (Ctrl-C) cancels the
build in the daemon."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from boxui.daemon.client import DaemonClient
from boxui.daemon.ndjson_stream import follow_ndjson

L = TypeVar("L", bound=BaseModel)
R = TypeVar("R")


def stream_build(client: DaemonClient, path: str, body: dict[str, object], what: str,
                 line_model: type[L], result_of: Callable[[L], R | None],
                 progress: Callable[[L], None]) -> R:
    """The build's result (`result_of` a line, None until the result line); a build that
    fails or is refused raises its one-line error, naming `what` was built."""
    def handle(line: L) -> R | None:
        result = result_of(line)
        if result is None and getattr(line, "type", None) != "error":
            progress(line)
        return result

    return follow_ndjson(client, path, body, f"the {what} build", line_model, handle)
