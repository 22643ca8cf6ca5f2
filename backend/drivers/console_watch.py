"""Wait for a line on a guest's serial console log, told by inotify rather than polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch


class ConsoleTail:
    """Incremental reader of complete lines appended to a console log."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._pending = b""

    def read_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._pending + chunk
        complete, _, self._pending = data.rpartition(b"\n")
        if not complete:
            return []
        return complete.decode(errors="replace").splitlines()


async def wait_for_line(
    tail: ConsoleTail,
    verdict: Callable[[str], bool | None],
    stop: asyncio.Event,
    gone: Callable[[], bool] | None = None,
) -> bool | None:
    """Return the first non-None `verdict` of a new line, or None once `stop` is set or
    `gone()` says the writer has gone (asked at each wake, so once a second at least).

    Woken by inotify on the log's directory; the 1 s timeout only lets `stop` and `gone`
    be noticed when the log stays silent.
    """
    tail.path.parent.mkdir(parents=True, exist_ok=True)
    for line in tail.read_lines():
        result = verdict(line)
        if result is not None:
            return result
    async for _ in awatch(tail.path.parent, debounce=10, step=10, stop_event=stop,
                          rust_timeout=1000, yield_on_timeout=True):
        for line in tail.read_lines():
            result = verdict(line)
            if result is not None:
                return result
        if stop.is_set() or (gone is not None and gone()):
            break
    return None
