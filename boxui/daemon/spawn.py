"""Starting the background daemon when a command needs one and none serves the state dir.

`ensure_daemon` is what every changing CLI command calls. The daemon runs as
`python -m boxui daemon --background --home DIR` (the state dir in its argv, so `ps` and
tests can tell which one it serves) in a session of its own with stdin from /dev/null,
writing its log, and anything it prints before logging is set up (a traceback), to
`logs/daemon.log` under the state dir. The CLI is told when it is ready: the daemon
writes a line to a pipe (`--ready-fd`) once it has opened the state dir and its API
socket listens (a request then waits in the backlog while it re-adopts machines and
loads the API); EOF on the pipe (it exited) or the timeout means it failed, and the end
of its log says why. `hand_over` starts one that takes over the caller's lock.

The product path has no switch for tests: a test that wants a daemon over the stand-in
driver starts one itself before its commands run (`tests/fake_daemon.py`), and
`ensure_daemon` then finds it like any other.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from backend.errors import BoxuiError, StateDirInUseError
from backend.state.state_dir import StateDir, open_state_dir
from backend.state.supervisor_lock import lock_holder
from boxui.daemon.client import BASE_URL, DaemonClient, read_answer, serving_daemon
from boxui.daemon.start_lock import start_lock

#: how long a starting daemon may take to serve (recovery of many machines included)
READY_TIMEOUT = 60.0
READY_LINE = b"ready\n"
LOG_TAIL_LINES = 3
#: -P: the daemon runs this install's boxui, never a `boxui/` in the caller's directory
DAEMON_COMMAND = (sys.executable, "-P", "-m", "boxui", "daemon")
#: states of a machine whose hypervisor runs (what a handed-over daemon supervises)
RUNNING_STATES = frozenset({"booting", "ready", "busy", "draining", "stopping"})


def daemon_log_path(dirs: StateDir) -> Path:
    return dirs.root / "logs" / "daemon.log"


def ensure_daemon(dirs: StateDir | None = None) -> DaemonClient:
    """A client for the supervisor serving the state dir, starting a daemon first if
    none does (saying so once on stderr). With no `dirs`, on the host the command acts on
    (`--host`, BOXUI_HOST, `boxui host use`): a remote boxui's daemon through SSH."""
    if dirs is None:
        from boxui.daemon.remote import remote_daemon, selected_remote

        remote = selected_remote()
        if remote is not None:
            return remote_daemon(remote)
    dirs = dirs or open_state_dir()
    pid = serving_daemon(dirs)
    if pid is None:
        with start_lock(dirs):
            pid = serving_daemon(dirs)
            if pid is None:
                holder = lock_holder(dirs.lock_file)
                if holder is not None:
                    raise StateDirInUseError(holder)
                pid = spawn_daemon(dirs)
                sys.stderr.write(f"started boxui daemon, pid {pid}\n")
                sys.stderr.flush()
    return DaemonClient(dirs.api_socket, pid, reconnect=lambda: ensure_daemon(dirs))


def spawn_daemon(dirs: StateDir, timeout: float = READY_TIMEOUT, *,
                 lock_fd: int | None = None, command: Sequence[str] | None = None) -> int:
    """Start a background daemon for `dirs` and return its pid once its API listens.
    The caller holds the start lock. `lock_fd`: the state dir's lock, held by the caller,
    for the daemon to take over (see `hand_over`). `command`: what runs the daemon
    (tests run one over the stand-in driver), given the same options."""
    log_path = daemon_log_path(dirs)
    log_path.parent.mkdir(mode=0o700, exist_ok=True)
    log_start = log_path.stat().st_size if log_path.exists() else 0
    read_end, write_end = os.pipe()
    passed = [write_end]
    try:
        os.set_inheritable(write_end, True)
        argv = [*(command or DAEMON_COMMAND), "--background", "--home", str(dirs.root),
                "--ready-fd", str(write_end)]
        if lock_fd is not None:
            passed.append(os.dup(lock_fd))  # a copy of its own, so the caller's stays
            os.set_inheritable(passed[-1], True)
            argv += ["--lock-fd", str(passed[-1])]
        pid = _spawn(argv, log_path)
    finally:
        for fd in passed:
            os.close(fd)
    try:
        answer = _read_ready(read_end, timeout)
    finally:
        os.close(read_end)
    if answer == READY_LINE:
        return pid
    status = _exit_status(pid)
    if answer is None and status is None:
        os.kill(pid, 15)  # SIGTERM: it may be stuck; a supervisor is safe to stop anywhere
        why = f"was not ready after {timeout:.0f} s; stopped it"
    else:
        why = f"exited ({status})" if status else "exited"
    raise BoxuiError(f"the boxui daemon (pid {pid}) {why}: {_log_tail(log_path, log_start)} "
                     f"(log: {log_path})")


def hand_over(dirs: StateDir, lock_fd: int, command: Sequence[str] | None = None,
              timeout: float = READY_TIMEOUT) -> tuple[int, int]:
    """Start a background daemon that takes over the caller's lock (held on `lock_fd`)
    and its machines; return its pid and how many running machines it supervises, once
    it has re-adopted them and answers. The caller has stopped supervising (its tasks
    ended, the VMs left running) and holds the start lock, so no CLI starts a daemon
    meanwhile; it lets go of its lock only after this returns."""
    pid = spawn_daemon(dirs, timeout, lock_fd=lock_fd, command=command)
    # its API answers once recovery is done (a request waits in the socket's backlog)
    transport = httpx.HTTPTransport(uds=str(dirs.api_socket))
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=timeout) as http:
            health = read_answer(http.get("/v1/health"))
    except httpx.TransportError as exc:
        raise BoxuiError(f"the boxui daemon (pid {pid}) took over but does not answer: "
                         f"{exc or type(exc).__name__} (log: {daemon_log_path(dirs)})"
                         ) from None
    running = sum(n for state, n in health["by_state"].items() if state in RUNNING_STATES)
    return pid, running


def _spawn(argv: list[str], log_path: Path) -> int:
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        return os.posix_spawn(argv[0], argv, os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ])
    except OSError as exc:
        raise BoxuiError(f"cannot start the boxui daemon: {exc.strerror}") from None
    finally:
        os.close(log_fd)


def _read_ready(fd: int, timeout: float) -> bytes | None:
    """What the daemon wrote before closing the pipe, or None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data


def _exit_status(pid: int) -> str | None:
    """How the daemon ended ("exit code 1", "signal 9"), or None if it still runs. It
    is this process's child until then: reaped here, it leaves no zombie."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        # EOF came first; the exit itself follows within moments
        done, status = os.waitpid(pid, 0) if _wait_briefly(pid) else (0, 0)
        if done == 0:
            return None
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _wait_briefly(pid: int, timeout: float = 5.0) -> bool:
    """Whether process `pid` has exited within `timeout` (told by its pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _log_tail(path: Path, start: int) -> str:
    """The last lines this daemon wrote (from `start`: the log holds earlier runs too)."""
    try:
        with path.open("rb") as log:
            log.seek(start if log.seek(0, 2) >= start else 0)
            text = log.read().decode(errors="replace")
    except OSError:
        return "its log cannot be read"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-LOG_TAIL_LINES:]
    return " | ".join(tail)[-400:] if tail else "it wrote nothing to its log"
