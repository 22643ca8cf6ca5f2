"""Reaching a guest over SSH: the system `ssh` for people, asyncssh for programs.

Why two clients: an interactive shell wants the user's real terminal, agent and habits,
which only the system `ssh` gives; running a command from boxui wants exit codes and
streamed output without spawning processes or parsing text, which asyncssh gives.

Both verify the guest strictly against the host key boxui generated for the machine
(see `backend.guest.machine_seed`). Trust-on-first-use would be wrong here: every
machine is reached through 127.0.0.1, so whichever process grabs a forwarded port
first would be "the machine" — and ports are reused between machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from backend.errors import BoxuiError
from backend.guest.machine_seed import (
    MachineKeys,
    client_private_key,
    known_hosts_line,
)
from backend.state.atomic_write import atomic_write_text
from backend.state.names import validate_name
from backend.supervision import exec_trace

if TYPE_CHECKING:
    # at run time asyncssh (~0.2 s to import) is imported by the functions that use it:
    # the supervisor imports this module, and a daemon re-adopts its machines before it
    # loads anything recovery does without
    import asyncssh

GUEST_HOST = "127.0.0.1"
GUEST_USER = "root"
KNOWN_HOSTS_FILE = "known_hosts"
SSH_PACKAGE = "openssh-client"
HOST_ALIAS_PREFIX = "boxui-"
_READ_CHUNK = 64 * 1024
#: how long a handshake with a ready guest may take: under TCG on a busy host (or while a
#: Debian guest starts the units it deferred until SSH answered) a first handshake has
#: taken over 10 s; a user waits rather than fails, as OpenSSH would.
GUEST_CONNECT_TIMEOUT = 30.0


class SshError(BoxuiError):
    code = "ssh"


class SshTimeoutError(SshError):
    """The command outlived its `timeout`; it has no exit status to report."""

    code = "ssh_timeout"


class ByteSink(Protocol):
    """Where remote output goes: `sys.stdout.buffer`, an `io.BytesIO`, a pipe, …"""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


# --- system ssh -------------------------------------------------------------------------


def find_ssh() -> str:
    """Path of the system `ssh`, or a one-line error saying what to install."""
    path = shutil.which("ssh")
    if path is None:
        raise SshError(f"ssh client not found on PATH; install it with `apt install {SSH_PACKAGE}`")
    return path


def known_hosts_path(machine_dir: Path) -> Path:
    return machine_dir.absolute() / KNOWN_HOSTS_FILE


def write_known_hosts(machine_dir: Path, keys: MachineKeys, port: int) -> Path:
    """Pin the guest's host key for the port it is forwarded on.

    Rewritten whenever the port may have changed: the entry is keyed by
    `[127.0.0.1]:port`, so a stale port would make `ssh` refuse the machine.
    """
    path = known_hosts_path(machine_dir)
    atomic_write_text(path, known_hosts_line(keys, port, GUEST_HOST), mode=0o600)
    return path


def _check_config_safe(value: str) -> None:
    if any(ch in value for ch in "\n\r\0"):
        raise SshError(f"path {value!r} contains a line break or NUL; ssh cannot use it")


def _escape_percent(value: str) -> str:
    """IdentityFile and UserKnownHostsFile expand `%` tokens, even given with -i or -o."""
    return value.replace("%", "%%")


def _config_arg(value: str) -> str:
    """One ssh_config argument, quoted so spaces do not split it into several.

    UserKnownHostsFile takes a space-separated list, so an unquoted path with a space
    silently becomes two files. Inside double quotes OpenSSH (>= 8.7) honours `\\"` and
    `\\\\` escapes; `%` is doubled because these options undergo token expansion.
    """
    _check_config_safe(value)
    escaped = _escape_percent(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def ssh_argv(
    machine_dir: Path,
    keys: MachineKeys,
    port: int,
    command: list[str] | None = None,
    ssh_binary: str = "ssh",
) -> list[str]:
    """Arguments for exec'ing the system `ssh` into the guest.

    The command words are shell-quoted one by one: `ssh` joins its trailing arguments
    with spaces and the guest's shell splits them again, so unquoted `"a b"` would
    arrive as two words. Quoting keeps each word intact, like `exec_command` does.
    """
    client_key = str(keys.client_key.absolute())
    _check_config_safe(client_key)
    if "%" in client_key:
        # `ssh -i` stat()s the literal path, then %-expands it when loading: no spelling
        # of a path containing `%` survives both, but the config option form does
        identity = ["-o", f"IdentityFile={_config_arg(client_key)}"]
    else:
        identity = ["-i", client_key]
    argv = [
        ssh_binary,
        *identity,
        "-p",
        str(port),
        "-o",
        f"UserKnownHostsFile={_config_arg(str(known_hosts_path(machine_dir)))}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        f"{GUEST_USER}@{GUEST_HOST}",
    ]
    if command is not None:
        argv.append("--")
        argv.extend(shlex.quote(word) for word in command)
    return argv


def ssh_config_block(name: str, machine_dir: Path, keys: MachineKeys, port: int) -> str:
    """A `~/.ssh/config` stanza so `ssh boxui-<name>`, scp and editors reach the guest.

    Only valid machine names are accepted: the name becomes a Host pattern, where
    `*`, `?`, `!` and `,` would match other hosts.
    """
    validate_name(name)
    lines = [
        f"Host {HOST_ALIAS_PREFIX}{name}",
        f"    HostName {GUEST_HOST}",
        f"    Port {port}",
        f"    User {GUEST_USER}",
        f"    IdentityFile {_config_arg(str(keys.client_key.absolute()))}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {_config_arg(str(known_hosts_path(machine_dir)))}",
        "    StrictHostKeyChecking yes",
    ]
    return "\n".join(lines) + "\n"


# --- asyncssh ---------------------------------------------------------------------------


def _connect_failure(where: str, exc: BaseException, connect_timeout: float) -> SshError:
    import asyncssh  # deferred: see the imports

    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        cause = "host key mismatch: whatever answers on this port is not this machine's guest"
    elif isinstance(exc, asyncssh.PermissionDenied):
        cause = "authentication failed: the guest did not accept the machine's client key"
    elif isinstance(exc, ConnectionRefusedError):
        cause = "connection refused (is the machine running?)"
    elif isinstance(exc, TimeoutError):
        cause = f"timed out after {connect_timeout:g}s"
    elif isinstance(exc, asyncssh.DisconnectError):
        cause = f"disconnected: {exc.reason or type(exc).__name__}"
    elif isinstance(exc, OSError):
        cause = exc.strerror or str(exc) or type(exc).__name__
    else:
        cause = str(exc) or type(exc).__name__
    return SshError(f"ssh to {where} failed: {cause}")


async def _pump(reader: asyncssh.SSHReader[bytes], sink: ByteSink, where: str) -> None:
    """Forward chunks as they arrive, so long-running commands show progress live.

    Only read errors become `SshError`; a failing sink (say, a closed stdout pipe) is
    the caller's problem and propagates unchanged.
    """
    import asyncssh  # deferred: see the imports

    while True:
        try:
            chunk = await reader.read(_READ_CHUNK)
        except (OSError, asyncssh.Error) as exc:
            raise SshError(f"ssh to {where}: connection lost: {exc}") from exc
        if not chunk:
            return
        sink.write(chunk)
        sink.flush()


def _feed_stdin(writer: asyncssh.SSHWriter[bytes], data: bytes | None) -> None:
    """Always send EOF: a command reading stdin must not wait for input that never comes."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # exited early
        if data:
            writer.write(data)
        writer.write_eof()


def _shell_status(process: asyncssh.SSHClientProcess[bytes]) -> int | None:
    """Exit status as a shell reports it: a signal n becomes 128+n."""
    code = process.returncode  # negative signal number on exit-signal
    if code is None:
        return None
    return 128 - code if code < 0 else code


class SshChannelError(SshError):
    """The command's channel could not be opened: the command never started in the guest,
    so trying again on a fresh connection cannot run it twice."""


async def connect(
    port: int,
    keys: MachineKeys,
    machine_dir: Path,
    *,
    connect_timeout: float = GUEST_CONNECT_TIMEOUT,
    client_factory: Callable[[], asyncssh.SSHClient] | None = None,
) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the guest, trusting only the machine's own host key.

    ~/.ssh/config and any agent are ignored, so the result does not depend on whoever
    runs boxui. `client_factory` lets a caller be told when the connection drops.
    """
    import asyncssh  # deferred: see the imports

    where = _where(machine_dir, port)
    try:
        client_key = client_private_key(keys)
        trusted = asyncssh.import_known_hosts(known_hosts_line(keys, port, GUEST_HOST))
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise SshError(f"ssh to {where}: cannot load the machine's keys: {exc}") from exc
    try:
        return await asyncssh.connect(
            GUEST_HOST,
            port,
            client_factory=client_factory,
            username=GUEST_USER,
            known_hosts=trusted,
            client_keys=[client_key],
            agent_path=None,
            password_auth=False,
            kbdint_auth=False,
            config=None,
            connect_timeout=connect_timeout,
        )
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise _connect_failure(where, exc, connect_timeout) from exc


async def exec_command(
    port: int,
    keys: MachineKeys,
    machine_dir: Path,
    argv: list[str],
    stdout: ByteSink,
    stderr: ByteSink,
    stdin: bytes | None = None,
    timeout: float | None = None,
    connect_timeout: float = GUEST_CONNECT_TIMEOUT,
) -> int:
    """Run `argv` in the guest over a connection of its own and return its exit status,
    streaming its output (the daemon keeps connections instead: `ssh_pool`)."""
    if not argv:
        raise SshError("no command to run over ssh")
    conn = await connect(port, keys, machine_dir, connect_timeout=connect_timeout)
    async with conn:
        status = await run_on(conn, _where(machine_dir, port), argv, stdout, stderr,
                              stdin=stdin, timeout=timeout)
    return status


async def run_on(
    conn: asyncssh.SSHClientConnection,
    where: str,
    argv: list[str],
    stdout: ByteSink,
    stderr: ByteSink,
    *,
    stdin: bytes | None = None,
    timeout: float | None = None,
    marker: str | None = None,
) -> int:
    """Run `argv` on a channel of its own over `conn` and return its exit status.

    The command line is `shlex.join(argv)` because SSH carries one string that the
    guest's /bin/sh re-splits; joining quotes each word so it arrives as one argument.
    `marker` (a command id, `[0-9a-f]+`) is exported as BOXUI_COMMAND first, so every
    process the command starts inherits it: what `kill_marked_argv` finds.
    """
    if not argv:
        raise SshError("no command to run over ssh")
    command = shlex.join(argv)
    if marker is not None:
        # no process of its own (an exec costs tens of ms under TCG): the session's shell
        # carries the mark in its command line, everything it starts in its environment
        command = f"export {MARKER_VAR}={marker}; {command}"
    try:
        async with asyncio.timeout(timeout):
            status = await _run(conn, command, stdout, stderr, stdin, where)
    except TimeoutError as exc:
        raise SshTimeoutError(
            f"ssh to {where}: command {_short(command)} timed out after {timeout:g}s"
        ) from exc
    if status is None:
        raise SshError(f"ssh to {where}: the guest closed the session without an exit status")
    return status


#: the environment variable that marks the processes of one command (see `run_on`)
MARKER_VAR = "BOXUI_COMMAND"


def kill_marked_argv(marker: str) -> list[str]:
    """A command that SIGKILLs every process of the command marked `marker` and prints
    how many: the session's shell (the mark is in its command line) and whatever it
    started (in their environment). How a deadline reaches a command's whole tree: the
    channel's own `signal` request would not do, as dropbear signals only the session's
    first process, so a pipeline's or a script's children would live on. The pattern is
    put together at run time, so this script's own command line never matches it."""
    script = (f"m={MARKER_VAR}=; m=${{m}}{marker}; n=0; for d in /proc/[0-9]*; do "
              'p=${d#/proc/}; [ "$p" = "$$" ] && continue; '
              # no process for kernel threads (PF_KTHREAD in stat's flags), nor for this
              # script's own children: a fork costs milliseconds under TCG
              'read -r s <"$d/stat" || continue; set -- ${s##*) }; '
              '[ $(($7 & 2097152)) = 0 ] && [ "$2" != "$$" ] || continue; '
              'if tr "\\0" "\\n" <"$d/environ" | grep -qx "$m" || '
              'tr "\\0" " " <"$d/cmdline" | grep -q "$m;"; '
              'then kill -KILL "$p" && n=$((n+1)); fi; done 2>/dev/null; echo $n')
    return ["sh", "-c", script]


def _where(machine_dir: Path, port: int) -> str:
    return f"machine {machine_dir.name} at {GUEST_HOST}:{port}"


async def _run(
    conn: asyncssh.SSHClientConnection,
    command: str,
    stdout: ByteSink,
    stderr: ByteSink,
    stdin: bytes | None,
    where: str,
) -> int | None:
    import asyncssh  # deferred: see the imports

    try:
        process = await conn.create_process(command, encoding=None)
    except (OSError, asyncssh.Error) as exc:
        raise SshChannelError(f"ssh to {where}: could not start the command: {exc}") from exc
    exec_trace.mark("channel open")
    _feed_stdin(process.stdin, stdin)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_pump(process.stdout, stdout, where))
            group.create_task(_pump(process.stderr, stderr, where))
    except ExceptionGroup as group_exc:
        # callers expect one plain error; both pumps usually fail for the same reason
        raise group_exc.exceptions[0] from None
    exec_trace.mark("output ended")
    await process.wait_closed()
    exec_trace.mark("channel closed")
    return _shell_status(process)


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."
