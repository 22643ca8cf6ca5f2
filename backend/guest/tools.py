"""Host tools and how to run them without a shell.

Every external program is located up front with `require_tool`, so a missing one fails
with "X not found: install it with `apt-get install PKG`" instead of a bare
`FileNotFoundError` halfway through a build. `run` only ever takes an argument list.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

from backend.guest.errors import GuestImageError

#: tool -> Debian package that ships it (what the user must install)
TOOL_PACKAGES: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "cpio": "cpio",
    "qemu-system-x86_64": "qemu-system-x86",
    "dropbearkey": "dropbear-bin",
}

_STDERR_TAIL = 400


def require_tool(name: str, search_path: str | None = None) -> str:
    """Return the absolute path of host tool `name` or raise naming the package to install."""
    found = shutil.which(name, path=search_path)
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise GuestImageError(f"{name} not found: install it with `apt-get install {package}`")
    return found


async def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    what: str,
) -> bytes:
    """Run `argv` (a list, never a shell string) and return its stdout.

    `what` names the step for the error message ("downloading linux-image-…"), because
    the raw command line is rarely what the user needs to see first.
    """
    if isinstance(argv, str):  # a string here would be a bug: refuse, don't split it
        raise TypeError("argv must be a sequence of arguments, not a string")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(stdin)
    except BaseException:  # cancelled: do not leave an orphan apt-get or cpio behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-_STDERR_TAIL:]
        raise GuestImageError(f"{what} failed (exit {proc.returncode}): {tail or 'no output'}")
    return out
