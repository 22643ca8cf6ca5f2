"""`S` inside tmux: SSH in a new tmux window, so the app stays on screen.

tmux gets an argument list after `--` (no shell string) and prints the new window's id
and its pane's pid; the pane's pid is then watched through a pidfd (the kernel says when
it exits; nothing is polled), so the sessions view drops the session when its window
closes.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime

from backend.errors import BoxuiError
from boxui.tui.screens.sessions import OpenSession


def inside_tmux() -> bool:
    return bool(os.environ.get("TMUX"))


async def open_window(name: str, argv: list[str]) -> OpenSession:
    """Run `argv` in a new tmux window named `name`; raises BoxuiError (one line)."""
    tmux = ["tmux", "new-window", "-P", "-F", "#{window_id} #{pane_pid}", "-n", name,
            "--", *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *tmux, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    except OSError as exc:
        raise BoxuiError(f"tmux: {exc}") from None
    if proc.returncode != 0:
        raise BoxuiError(f"tmux new-window failed: {err.decode(errors='replace').strip()}")
    window, _, pid = out.decode().strip().partition(" ")
    return OpenSession(name, f"tmux window {window}", datetime.now(),
                       int(pid) if pid.isdigit() else None)


async def wait_closed(session: OpenSession) -> None:
    """Return when the session's pane process has exited (at once if it has)."""
    if session.pid is None:
        return
    try:
        fd = os.pidfd_open(session.pid)
    except OSError:  # gone already
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
