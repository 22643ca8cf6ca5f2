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

from backend.api.template_models import TemplateBuildLine
from backend.state.state_dir import open_state_dir
from backend.template_builds.from_source import read_source
from backend.template_builds.runs import BuildSource, checked, stored_source
from boxui.daemon.build_stream import stream_build
from boxui.daemon.client import DaemonClient

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
    return stream_build(client, BUILDS_PATH, body, "template", TemplateBuildLine, _result,
                        lambda line: None if line.message is None else progress(line.message))


def _result(line: TemplateBuildLine) -> dict[str, Any] | None:
    if line.type == "result" and line.result is not None:
        return line.result.model_dump(mode="json")
    return None
