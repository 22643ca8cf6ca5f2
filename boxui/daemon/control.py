"""Stopping the daemon that serves a state dir: `boxui daemon stop`.

The signal goes only to a proven daemon: the process that holds the state dir's lock,
answers on its socket with its own pid, and runs `boxui daemon` (not the app, which the
user quits there). It is signalled through a pidfd opened before the checks, so a pid
reused meanwhile can never be hit, and its exit is awaited on the same pidfd.
"""

from __future__ import annotations

import os
import select
import signal

import psutil

from backend.errors import BoxuiError
from backend.state.state_dir import StateDir
from backend.state.supervisor_lock import lock_holder
from boxui.daemon.client import DaemonClient, serving_daemon


def stop_daemon(dirs: StateDir, timeout: float) -> int | None:
    """SIGTERM the daemon serving `dirs` and wait until it has exited; its pid, or None
    when no daemon serves the state dir. Machines keep running."""
    pid = serving_daemon(dirs)
    if pid is None:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        _prove(dirs, pid)
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not select.select([pidfd], [], [], timeout)[0]:
            raise BoxuiError(f"the boxui daemon (pid {pid}) did not exit within "
                             f"{timeout:.0f} s of SIGTERM")
    except ProcessLookupError:
        pass  # it exited on its own meanwhile
    finally:
        os.close(pidfd)
    return pid


def _prove(dirs: StateDir, pid: int) -> None:
    with DaemonClient(dirs.api_socket, pid) as client:
        answered = client.call("GET", "/v1/health")["pid"]
    if answered != pid or lock_holder(dirs.lock_file) != pid:
        raise BoxuiError(f"pid {pid} holds the state dir but pid {answered} answers on "
                         f"its socket; not stopping either")
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        raise ProcessLookupError(pid) from None
    if not any("daemon" in arg for arg in cmdline):
        raise BoxuiError(f"pid {pid} is the boxui app, not a daemon: quit it there")
