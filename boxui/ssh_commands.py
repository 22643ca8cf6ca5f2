"""`boxui ssh`, `ssh-config` and `exec`: reach a running machine with its own key.

None of these takes the state dir's lock: they only read the machine's record (for its
port) and keys, so they work while a supervisor runs.

`exec` through a daemon is the command people time: it speaks HTTP/1.1 to the daemon's
unix socket with the standard library (one request, answered with a Content-Length or
chunked body) instead of httpx, and SSH (asyncssh, the machine's keys) is imported only
by the commands that use it here. Together those imports cost more than the daemon takes
to run the command. For the same reason this module imports neither `typing` nor
`dataclasses` (`inspect`, `ast`): `boxui exec` imports it before anything else.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.names import validate_name
from backend.state.state_dir import StateDir, open_state_dir

TYPE_CHECKING = False  # typing's own costs an import; mypy reads this one as True
if TYPE_CHECKING:
    from typing import Any

    from backend.guest.machine_seed import MachineKeys

#: no overall timeout (a command may run for hours); connecting must be quick
CONNECT_TIMEOUT = 5.0
_MAX_HEADER = 64 * 1024

#: unhealthy too: reaching a guest that fails its liveness probe is how it is debugged
REACHABLE = ("ready", "busy", "draining", "unhealthy")


class Target:
    __slots__ = ("keys", "machine_dir", "port")

    def __init__(self, machine_dir: Path, keys: MachineKeys, port: int) -> None:
        self.machine_dir, self.keys, self.port = machine_dir, keys, port


def _target(name: str, home: Path | None = None) -> Target:
    from backend.guest.errors import GuestImageError
    from backend.guest.machine_seed import load_machine_keys
    from backend.state.machine_store import MachineStore
    from backend.state.supervisor_lock import lock_holder
    from backend.supervision.ssh_access import write_known_hosts

    dirs = open_state_dir(home)
    supervised = lock_holder(dirs.lock_file) is not None
    machine = MachineStore(dirs).load(name, supervised=supervised)
    record = machine.record
    alive = machine.needs_recovery and machine.reason and "running without" in machine.reason
    if machine.state.value not in REACHABLE and not alive:
        raise BoxuiError(f"{name} is {machine.state.value}, not running; "
                         f"start it with: boxui start {name}")
    if record is None or record.ssh_port is None:
        raise BoxuiError(f"{name} has no SSH port recorded")
    machine_dir = dirs.machine_dir(name)
    try:
        keys = load_machine_keys(machine_dir)
    except GuestImageError as exc:
        raise BoxuiError(f"{name} has no SSH keys boxui made ({exc}); it boots a kernel of "
                         "its own, so reach it your own way") from None
    write_known_hosts(machine_dir, keys, record.ssh_port)
    return Target(machine_dir, keys, record.ssh_port)


def machine_target(name: str, home: Path | None = None) -> Target:
    """Port, keys and dir of a running machine, its host key pinned (`boxui cp` too;
    the app passes its own state dir, which the demo's is not the default)."""
    return _target(name, home)


def ssh_exec_argv(name: str, command: list[str] | None,
                  home: Path | None = None) -> list[str]:
    """`home`: the state dir the machine lives in (the app's may not be the default)."""
    from backend.supervision.ssh_access import find_ssh, ssh_argv

    target = _target(name, home)
    return ssh_argv(target.machine_dir, target.keys, target.port, command, find_ssh())


def ssh_config_text(name: str) -> str:
    from backend.supervision.ssh_access import ssh_config_block

    target = _target(name)
    return ssh_config_block(name, target.machine_dir, target.keys, target.port)


def install_ssh_config() -> str:
    """Write the Host entries and include them from ~/.ssh/config; what was done."""
    from backend.state.machine_store import MachineStore
    from backend.state.supervisor_lock import lock_holder
    from backend.supervision.ssh_config_file import install

    dirs = open_state_dir()
    supervised = lock_holder(dirs.lock_file) is not None
    machines = MachineStore(dirs).load_all(supervised=supervised)
    done = install(dirs, machines, Path.home())
    how = "added an Include line to" if done.include_added else "already included by"
    names = [m.name for m in machines]
    example = f"; e.g. ssh {names[0]}.boxui" if names else ""
    return (f"wrote {done.config} ({len(names)} machines as NAME.boxui, kept current by "
            f"boxui); {how} {done.user_config}{example}")


# --- exec through the daemon ------------------------------------------------------------


def exec_through_daemon(name: str, command: list[str], dirs: StateDir | None = None, *,
                        options: dict[str, object] | None = None) -> int | None:
    """Run `command` in `name` through the daemon serving the state dir, writing its
    output to ours; its exit status, or None when no daemon answers on the socket.
    `options`: more fields of the exec request (timeout, idempotent, max_attempts).

    The daemon counts the command as in-flight work (scale-down waits for it) and runs
    it over the machine's kept SSH connection.
    """
    socket_path = (dirs or open_state_dir()).api_socket
    sock = _connect(socket_path)
    if sock is None:
        return None
    body = json.dumps({"argv": command, **(options or {})}).encode()
    request = (f"POST /v1/machines/{validate_name(name)}/exec HTTP/1.1\r\n"
               "Host: boxui\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        with sock:
            sock.settimeout(None)
            sock.sendall(request + body)
            status, answer = _read_response(sock)
    except OSError as exc:
        raise _unreachable(socket_path, exc) from None
    if status >= 400:
        raise BoxuiError(_error_message(status, answer))
    try:
        result = json.loads(answer)
        out, err = base64.b64decode(result["stdout_b64"]), base64.b64decode(result["stderr_b64"])
        code = int(result["exit_code"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BoxuiError(f"the boxui daemon sent an answer boxui cannot read: {exc}") from None
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    return code


def _connect(socket_path: Path) -> socket.socket | None:
    """A connection to the daemon's socket, or None when nothing listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as exc:
        sock.close()
        raise _unreachable(socket_path, exc) from None
    return sock


def _unreachable(socket_path: Path, exc: OSError) -> BoxuiError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return BoxuiError(f"the boxui daemon on {socket_path} did not answer: {reason}")


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the one response on a `Connection: close` request."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > _MAX_HEADER:
            raise ConnectionResetError(0, "the connection closed before an answer")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionResetError(0, f"not an HTTP answer: {lines[0][:80]!r}") from None
    headers = dict((k.strip().lower(), v.strip())
                   for k, _, v in (line.partition(":") for line in lines[1:]))
    chunks = [rest]
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    body = b"".join(chunks)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, _unchunk(body)
    length = int(headers.get("content-length", len(body)))
    if len(body) < length:
        raise ConnectionResetError(0, "the connection closed in the middle of the answer")
    return status, body[:length]


def _unchunk(body: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[line_end + 2:line_end + 2 + size])
        pos = line_end + 2 + size + 2


def _error_message(status: int, answer: bytes) -> str:
    """The daemon's own one-line message (`{code, message}`), else the status and text."""
    try:
        parsed: Any = json.loads(answer)
        return str(parsed["message"])
    except (ValueError, KeyError, TypeError):
        return f"the boxui daemon answered {status}: {answer[:200].decode(errors='replace')}"
