"""A template build that a supervisor runs for a client following its progress.

The build is a task of the supervisor: it ends with it, and the VMs a snapshot build
boots are started through the supervisor's driver, with its accelerator, on ports none
of its machines holds. The client reads progress from a queue as it comes. A client that
goes away cancels the build (`BuildRun.cancel`); that is safe at any moment because a
build is all-or-nothing (`templates.publish`): a cancelled one leaves no revision and
does not move `current`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.state_dir import StateDir
from backend.supervision.supervisor import Supervisor
from backend.template_builds.from_source import build_from_text, read_source
from backend.templates.errors import TemplateNotFoundError
from backend.templates.layout import TemplateDir
from backend.templates.publish import BuildResult
from backend.templates.template_spec import parse_template

log = logging.getLogger("boxui.templates")


@dataclass(frozen=True)
class BuildSource:
    """A template's text, and what messages call it (the client's file, or the stored
    `template.toml`)."""

    text: str
    path: Path


def stored_source(dirs: StateDir, template_id: str) -> BuildSource:
    """The template.toml last built under `template_id` (raises for a bad or unknown id)."""
    spec = TemplateDir.of(dirs, template_id).spec
    if not spec.is_file():
        raise TemplateNotFoundError(f"no template with id {template_id!r}")
    return BuildSource(read_source(spec), spec)


def checked(source: BuildSource) -> BuildSource:
    """Raises `SpecError` for text that is not a valid template, before anything starts."""
    parse_template(source.text, source.path)
    return source


@dataclass(frozen=True)
class Progress:
    message: str


@dataclass(frozen=True)
class Built:
    result: BuildResult
    notes: list[str]


@dataclass(frozen=True)
class BuildFailed:
    code: str
    message: str


BuildUpdate = Progress | Built | BuildFailed
CANCELLED = BuildFailed("cancelled", "the template build was cancelled; nothing was published")


class BuildRun:
    """Progress lines, then exactly one `Built` or `BuildFailed`."""

    def __init__(self) -> None:
        self._updates: asyncio.Queue[BuildUpdate] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def next_update(self) -> BuildUpdate:
        return await self._updates.get()

    def cancel(self) -> None:
        """Stop the build if it still runs (a no-op once it has ended)."""
        if self._task is not None:
            self._task.cancel()

    async def wait(self) -> None:
        """Until the build's task has ended, cleanup included."""
        if self._task is not None:
            await asyncio.wait({self._task})

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():  # by `cancel`, or by the supervisor shutting down
            self._updates.put_nowait(CANCELLED)


def start_build(supervisor: Supervisor, source: BuildSource, *, snapshot: bool) -> BuildRun:
    run = BuildRun()

    async def build() -> None:
        report = run._updates.put_nowait
        try:
            result, notes = await build_from_text(
                supervisor.engine.dirs, source.text, source.path, snapshot=snapshot,
                driver=supervisor.driver, accel=supervisor.accel(),
                progress=lambda message: report(Progress(message)),
                avoid_ports=lambda: {h.ssh_port for h in supervisor.handles.values()})
        except BoxuiError as exc:
            report(BuildFailed(exc.code, str(exc)))
        except Exception as exc:  # a bug: one line for the client, the traceback logged
            log.exception("template build of %s failed", source.path)
            report(BuildFailed("internal", f"internal error: {type(exc).__name__}: {exc}"))
        else:
            report(Built(result, notes))

    run._task = supervisor.spawn(build(), f"template-build:{source.path}")
    run._task.add_done_callback(run._ended)
    return run
