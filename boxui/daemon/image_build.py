"""`boxui image build` through the daemon: post the build, follow its NDJSON progress,
return its result. Ctrl-C closes the connection, which cancels the build in the daemon
(and a cancelled build leaves no image)."""

from __future__ import annotations

from collections.abc import Callable

from backend.api.image_models import ImageBuildLine, ImageBuildResult
from boxui.daemon.build_stream import stream_build
from boxui.daemon.client import DaemonClient

BUILDS_PATH = "/v1/images/builds"


def build_via_api(client: DaemonClient, name: str,
                  progress: Callable[[ImageBuildLine], None]) -> ImageBuildResult:
    return stream_build(client, BUILDS_PATH, {"name": name}, "image", ImageBuildLine,
                        _result, progress)


def _result(line: ImageBuildLine) -> ImageBuildResult | None:
    return line.result if line.type == "result" else None
