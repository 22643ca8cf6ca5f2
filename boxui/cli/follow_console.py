"""`boxui logs`: the serial console log, and with -f new output as the guest writes it."""

from __future__ import annotations

import sys

from watchfiles import awatch

from backend.errors import BoxuiError, MachineNotFoundError
from backend.state.state_dir import open_state_dir


async def print_console(name: str, *, follow: bool) -> None:
    dirs = open_state_dir()
    if not dirs.machine_dir(name).is_dir():
        raise MachineNotFoundError(name)
    path = dirs.console_log(name)
    if not path.exists() and not follow:
        raise BoxuiError(f"{name} has no console log yet (it has not been started)")
    out = sys.stdout.buffer
    offset = 0

    def drain() -> None:
        nonlocal offset
        try:
            with path.open("rb") as fh:
                if fh.seek(0, 2) < offset:  # rotated by a new boot: start over
                    offset = 0
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return
        offset += len(data)
        out.write(data)
        out.flush()

    drain()
    if follow:
        async for _ in awatch(path.parent, debounce=20, step=20):
            drain()
