"""A kept SSH connection per remote boxui host, shared by CLI calls, as OpenSSH's
ControlMaster/ControlPersist keeps one.

Each CLI call would otherwise pay a new SSH connection (TCP, key exchange, auth: most of
the ~0.5-1 s a remote command added). The first call starts a small background process,
the keeper, that holds one asyncssh connection (the same `SshLink`, so `known_hosts`
pinning and `~/.ssh/config` apply as before) and serves, in a private 0700 dir of the
state dir (its sockets 0600):
- `ctl.sock`: one request per connection, a JSON line: `run` (a command there, its
  output and exit status streamed back in frames), `endpoint` (the remote API socket,
  its daemon started first if need be: what `ApiTunnel` asks) or `stage` (files moved
  over SFTP for a relayed command: `backend.hosts.staging`);
- `api.sock`: the remote API socket, each local connection forwarded on a channel of
  the kept connection.
It exits after IDLE_ENV seconds with no client (default 60; 0: keep no connection), or
when the connection drops (SSH keepalives tell it), so a dead or stale keeper is met by
a failed connect and replaced by the next call, under the dir's spawn lock; `keeper.lock`
is flocked by the keeper for its life, so one serves each dir. The dir's name carries a
digest of the host definition: a host added again with another address gets a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backend.errors import BoxuiError
from backend.hosts.registry import HostDef
from backend.hosts.ssh_link import HostKeyRefusedError, HostUnreachableError
from backend.state.state_dir import StateDir, check_private_dir

IDLE_ENV = "BOXUI_HOST_LINK_IDLE"
DEFAULT_IDLE = 60.0
#: the keeper's connect (5 s) and a slow start on a loaded machine
SPAWN_TIMEOUT = 30.0
_FRAME = struct.Struct(">cI")
OUT, ERR, EXIT, FAIL = b"1", b"2", b"x", b"e"


class KeptLinkError(BoxuiError):
    code = "unreachable"


def idle_timeout() -> float:
    """The keeper's idle timeout from IDLE_ENV; 0 turns kept connections off."""
    try:
        return max(0.0, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE)))
    except ValueError:
        return DEFAULT_IDLE


def link_dir(dirs: StateDir, host: HostDef) -> Path:
    """The keeper's private dir for `host`: beside the API socket, short enough for a
    unix socket path."""
    digest = hashlib.sha256(host.model_dump_json().encode()).hexdigest()[:8]
    leaf = f"host-link-{host.name}-{digest}"
    preferred = dirs.api_socket.parent / leaf
    if len(str(preferred / "ctl.sock")) <= 104:
        return preferred
    return dirs._fallback_base() / leaf


def _private_dir(path: Path) -> Path:
    """Made 0700, and refused if another user owns it (it may be under /tmp)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    check_private_dir(path)
    os.chmod(path, 0o700)
    return path


def write_frame(tag: bytes, data: bytes) -> bytes:
    return _FRAME.pack(tag, len(data)) + data


# -- the client side: used by the CLI ------------------------------------------------


def connect_ctl(path: Path) -> socket.socket | None:
    """A connection to a live keeper's control socket, or None (none, or a stale one)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path / "ctl.sock"))
    except OSError:
        sock.close()
        return None
    return sock


@contextlib.contextmanager
def _spawn_lock(path: Path) -> Iterator[None]:
    fd = os.open(path / "spawn.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def keeper_socket(dirs: StateDir, host: HostDef) -> socket.socket:
    """A control connection to `host`'s keeper, started first when none serves: one line
    (`KeptLinkError`, or the keeper's own unreachable/host key line) when it cannot be."""
    path = _private_dir(link_dir(dirs, host))
    sock = connect_ctl(path)
    if sock is not None:
        return sock
    with _spawn_lock(path):
        sock = connect_ctl(path)  # another call may have started one meanwhile
        if sock is None:
            _spawn(path, host)
            sock = connect_ctl(path)
    if sock is None:
        raise KeptLinkError(f"host {host.name}: the kept SSH connection did not start "
                            f"(see {path / 'keeper.log'})")
    return sock


def _spawn(path: Path, host: HostDef) -> None:
    """Start a keeper and wait until it says it serves (or why it cannot)."""
    read_end, write_end = os.pipe()
    try:
        with (path / "keeper.log").open("ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "backend.hosts.link_keeper", str(path),
                 json.dumps(host.model_dump() | {"name": host.name}), str(idle_timeout()),
                 str(write_end)],
                pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=log, start_new_session=True, close_fds=True, cwd="/")
        os.close(write_end)
        write_end = -1
        answer = _read_ready(read_end)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if answer.startswith("error "):
        code, _, message = answer.removeprefix("error ").partition(" ")
        raise (HostKeyRefusedError if code == "host_key_refused"
               else HostUnreachableError)(message)


def _read_ready(fd: int) -> str:
    """The keeper's one line on its ready pipe (told, not polled), within SPAWN_TIMEOUT."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], SPAWN_TIMEOUT)
        if not ready:
            return "error unreachable the kept SSH connection did not start in time"
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip() or "error unreachable the kept SSH " \
        "connection exited as it started"


def request(sock: socket.socket, payload: dict[str, Any]) -> None:
    try:
        sock.sendall(json.dumps(payload).encode() + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        raise EOFError from None  # a keeper on its way out: the caller starts another


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv_exactly(sock, _FRAME.size)
    tag, size = _FRAME.unpack(head)
    return tag, _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise EOFError
        data += chunk
    return data


def relay(dirs: StateDir, host: HostDef, argv: list[str]) -> int:
    """`argv` on `host` through its keeper, its output written to fds 1 and 2 as it
    comes; its exit status. A keeper gone before answering is replaced once."""
    for attempt in (1, 2):
        with keeper_socket(dirs, host) as sock:
            try:
                request(sock, {"op": "run", "argv": argv})
                return _stream_frames(sock, host)
            except EOFError:  # nothing came: it exited (idle) as this call arrived
                if attempt == 2:
                    raise KeptLinkError(f"host {host.name}: the connection dropped") from None
    raise AssertionError("unreachable")


def _stream_frames(sock: socket.socket, host: HostDef) -> int:
    answered = False
    while True:
        try:
            tag, data = recv_frame(sock)
        except EOFError:
            if answered:  # output came: running it again would run it twice
                raise KeptLinkError(f"host {host.name}: the connection dropped") from None
            raise
        answered = True
        if tag in (OUT, ERR):
            os.write(1 if tag == OUT else 2, data)
        elif tag == EXIT:
            return int(json.loads(data)["status"])
        else:
            _raise_failure(data)


def _raise_failure(data: bytes) -> None:
    failure = json.loads(data)
    kinds: dict[str, type[BoxuiError]] = {
        "unreachable": HostUnreachableError, "host_key_refused": HostKeyRefusedError}
    raise kinds.get(failure.get("code"), KeptLinkError)(str(failure.get("error")))


def endpoint(dirs: StateDir, host: HostDef, remembered: Path | None) -> dict[str, Any]:
    """The remote API socket through `host`'s keeper (its daemon started first if none
    ran): {socket, pid, started, api}, `api` the local socket forwarded to it."""
    return ask(dirs, host, {"op": "endpoint",
                            "remembered": str(remembered) if remembered else None})


def ask(dirs: StateDir, host: HostDef, payload: dict[str, Any]) -> dict[str, Any]:
    """One request to `host`'s keeper answered by one JSON object (`endpoint`, `stage`);
    a keeper gone before answering is replaced once."""
    for attempt in (1, 2):
        with keeper_socket(dirs, host) as sock:
            try:
                request(sock, payload)
                tag, data = recv_frame(sock)
            except EOFError:
                if attempt == 2:
                    raise KeptLinkError(f"host {host.name}: the connection dropped") from None
                continue
            if tag != EXIT:
                _raise_failure(data)
            answer: dict[str, Any] = json.loads(data)
            return answer
    raise AssertionError("unreachable")


def stop_keepers(dirs: StateDir) -> int:
    """Ask every keeper of this state dir to exit now (`host rm`, tests); how many were
    asked. Each closes its sockets first, so a later call starts a new one."""
    asked = 0
    for base in {dirs.api_socket.parent, dirs._fallback_base()}:
        for path in sorted(base.glob("host-link-*")) if base.is_dir() else ():
            sock = connect_ctl(path)
            if sock is None:
                continue
            with sock, contextlib.suppress(EOFError, OSError):
                request(sock, {"op": "exit"})
                sock.recv(1)  # closed once it has stopped serving
            asked += 1
    return asked
