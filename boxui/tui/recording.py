"""Demo recordings: a live session's events as JSON lines, to be played back later.

The first line is a header; every other line is one CloudEvent with `at`, its time in
seconds from the start of the recording (negative for the history before it, which a
replay applies at once so that it opens on the state the recording opened on), and the
machine's spec the first time the machine appears, so a replay's table shows its size.
The file is written as `FILE.part` and renamed when the recording ends, so FILE is
always a whole recording; a recording cut short (boxui killed) stays in `FILE.part`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from backend.errors import BoxuiError
from backend.state.event_bus import Missed
from backend.state.events import CloudEvent, now_utc
from backend.state.machine_spec import MachineSpec
from backend.state.validation_text import describe_validation_error
from boxui.tui.backend import AppBackend

FORMAT: Final = "boxui-recording"
VERSION: Final = 1
#: how much history a recording starts with (the API's maximum for one read)
HISTORY_LIMIT = 10_000


class RecordingHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["boxui-recording"] = FORMAT
    version: Literal[1] = VERSION
    started: datetime
    #: what was recorded, for the replay's title ("the demo", "script lifecycle.toml")
    title: str = ""


class RecordedEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float
    event: CloudEvent
    spec: MachineSpec | None = None


class Recording(BaseModel):
    header: RecordingHeader
    lines: list[RecordedEvent]

    @property
    def duration(self) -> float:
        """Seconds from the start to the last event (the history before does not count)."""
        return max(0.0, *(line.at for line in self.lines))


def load_recording(path: Path) -> Recording:
    """Read and validate a recording; a bad line is named by its number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BoxuiError(f"cannot read recording {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BoxuiError(f"{path} is not a boxui recording (not UTF-8 text)") from None
    rows = text.splitlines()
    if not rows:
        raise BoxuiError(f"{path} is empty, not a boxui recording")
    try:
        header = RecordingHeader.model_validate_json(rows[0])
    except ValidationError as exc:
        raise BoxuiError(f"{path}: line 1 is not a boxui recording header "
                         f"({describe_validation_error(exc)})") from None
    lines = []
    for number, row in enumerate(rows[1:], start=2):
        if not row.strip():
            continue
        try:
            lines.append(RecordedEvent.model_validate_json(row))
        except ValidationError as exc:
            raise BoxuiError(f"{path}: line {number}: "
                             f"{describe_validation_error(exc)}") from None
    lines.sort(key=lambda line: line.at)
    return Recording(header=header, lines=lines)


class Recorder:
    """Writes what `backend` sees into `path` until cancelled, then renames it into place.

    Subscribes before reading the history, so no event falls in between (one seen in
    both is written once)."""

    def __init__(self, backend: AppBackend, path: Path, *, title: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.path = path
        self.title = title
        self.clock = clock
        self.written = 0
        self._seen_machines: set[str] = set()

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    async def run(self) -> None:
        await self.backend.ready.wait()
        subscription = self.backend.subscribe_events()
        started, origin = now_utc(), self.clock()
        out = await asyncio.to_thread(self.part.open, "w", encoding="utf-8")
        try:
            header = RecordingHeader(started=started, title=self.title)
            out.write(header.model_dump_json() + "\n")
            history = await self.backend.event_history(HISTORY_LIMIT)
            seen = {event.id for event in history}
            for event in history:
                self._write(out, (event.time - started).total_seconds(), event)
            out.flush()
            async for item in subscription:
                self._take(out, item, seen, origin)
        finally:
            # what was published before the cancel but not yet read belongs in it too
            while (left := subscription.get_nowait()) is not None:
                self._take(out, left, seen, origin)
            subscription.close()
            out.close()
            os.replace(self.part, self.path)  # a rename: whole or not at all

    def _take(self, out: IO[str], item: CloudEvent | Missed, seen: set[str],
              origin: float) -> None:
        if isinstance(item, Missed) or item.id in seen:
            return
        self._write(out, self.clock() - origin, item)
        out.flush()

    def _write(self, out: IO[str], at: float, event: CloudEvent) -> None:
        name = event.subject
        spec = None
        if name and name not in self._seen_machines and event.type.startswith(
                "dev.boxui.instance.v1."):
            self._seen_machines.add(name)
            try:
                spec = self.backend.load_spec(name)
            except (BoxuiError, OSError):
                spec = None  # deleted already, or never had files: the table shows "-"
        line = RecordedEvent(at=round(at, 3), event=event, spec=spec)
        out.write(line.model_dump_json(exclude_none=True) + "\n")
        self.written += 1
