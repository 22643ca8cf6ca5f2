"""The serial console of the selected machine, tailed live.

Reading uses aiofiles so a slow disk never blocks the UI; new output is noticed through
filesystem notifications (watchfiles), not by polling the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiofiles
from textual.widgets import RichLog
from watchfiles import awatch

TAIL_BYTES = 16 * 1024


class ConsolePane(RichLog):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(max_lines=1000, wrap=False, markup=False, id=id, classes=classes)
        self.path: Path | None = None

    async def follow(self, path: Path) -> None:
        """Show the end of `path`, then keep appending; runs until the worker is cancelled
        (the selection changed)."""
        self.path = path
        self.clear()
        self.border_title = f"console: {path.parent.name}"
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
                self.write(line.rstrip("\r"))

        await drain()
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            async for _ in awatch(path.parent, debounce=50, step=50):
                await drain()
