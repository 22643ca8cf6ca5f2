"""The serial console of the selected machine, tailed live.

Reading uses aiofiles so a slow disk never blocks the UI; new output is noticed through
filesystem notifications (watchfiles), not by polling the file.
"""

from __future__ import annotations

import contextlib
from collections import deque
from pathlib import Path

import aiofiles
from textual.widgets import RichLog
from watchfiles import awatch

from boxui.tui.text_filter import TextFilter

TAIL_BYTES = 16 * 1024
MAX_LINES = 1000


class ConsolePane(RichLog):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, id=id,
                         classes=classes)
        self.path: Path | None = None
        #: every line read (bounded as the pane is): a new filter redraws from them
        self.kept: deque[str] = deque(maxlen=MAX_LINES)
        self.filter = TextFilter()

    def set_filter(self, typed: str) -> None:
        """`/` on the console: only matching lines, drawn again from those kept."""
        self.filter = TextFilter.parse(typed)
        super().clear()
        for line in self.kept:
            if self.filter.matches(line):
                self.write(line)
        self._title()

    def clear(self) -> ConsolePane:
        self.kept.clear()
        super().clear()
        return self

    def add_line(self, line: str) -> None:
        self.kept.append(line)
        if self.filter.matches(line):
            self.write(line)

    def _title(self) -> None:
        where = f"console: {self.path.parent.name}" if self.path else "console"
        self.border_title = f"{where} {self.filter.describe()}".rstrip()

    async def follow(self, path: Path) -> None:
        """Show the end of `path`, then keep appending; runs until the worker is cancelled
        (the selection changed)."""
        self.path = path
        self.clear()
        self._title()
        offset = 0
        pending = b""

        async def drain() -> None:
            nonlocal offset, pending
            try:
                async with aiofiles.open(path, "rb") as fh:
                    size = await fh.seek(0, 2)
                    if size < offset:  # a new boot rotated the log
                        offset = 0
                        self.clear()
                    if offset == 0 and size > TAIL_BYTES:
                        offset = size - TAIL_BYTES
                    await fh.seek(offset)
                    data = await fh.read()
            except FileNotFoundError:
                return
            offset += len(data)
            text = (pending + data).decode(errors="replace")
            complete, _, rest = text.rpartition("\n")
            pending = rest.encode()
            for line in complete.splitlines():
                self.add_line(line.rstrip("\r"))

        await drain()
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            async for _ in awatch(path.parent, debounce=50, step=50):
                await drain()
