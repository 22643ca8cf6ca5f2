"""`boxui logs`: the serial console log (or with --provision, the provision scripts'
output), and with -f new output as it is written."""

from __future__ import annotations

import sys

from watchfiles import awatch

from backend.errors import BoxuiError, MachineNotFoundError
from backend.state.state_dir import open_state_dir
from backend.supervision.provisioning import LOG_FILE, provision_dir


async def print_console(name: str, *, follow: bool, provision: bool = False) -> None:
    dirs = open_state_dir()
    if not dirs.machine_dir(name).is_dir():
        raise MachineNotFoundError(name)
    path = dirs.console_log(name)
    if provision:
        path = provision_dir(dirs.machine_dir(name)) / LOG_FILE
        if not path.parent.is_dir():
            raise BoxuiError(f"{name} has no provision scripts")
        if not path.exists() and not follow:
            raise BoxuiError(f"{name} has no provision output yet (its scripts have not run)")
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
