"""`boxui ssh-config --install`: a Host entry per machine in one file ~/.ssh/config
includes, so `ssh NAME.boxui`, scp, rsync, git and editors' Remote-SSH reach machines.

The file lives in the state dir (`ssh/config`, 0600) and its existence is what
"installed" means: a supervisor that runs rewrites it as machines come and go and boot on
new SSH ports (it is told by the engine's events, never polls). The host key is pinned
through `HostKeyAlias NAME.boxui` and boxui's own `ssh/known_hosts`, so the pin does not
depend on the port, which changes at every boot. A machine that does not run gets an
entry whose ProxyCommand says so in one line, rather than none (ssh would then try the
host itself) or a stale port (which another machine may hold now).

~/.ssh/config gains one `Include` line, once, at its top: an Include inside a Host or
Match block applies only within it. The user's file is rewritten atomically (through a
symlink, to its target) with everything it had, and keeps its mode.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.guest.errors import GuestImageError
from backend.guest.machine_seed import host_public_key, load_machine_keys
from backend.state.atomic_write import atomic_write_text
from backend.state.engine import Engine
from backend.state.event_bus import Missed
from backend.state.events import INSTANCE_TYPE_PREFIX, CloudEvent
from backend.state.lifecycle import ACTIVE_STATES
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir
from backend.supervision.ssh_access import GUEST_HOST, GUEST_USER, SshError, _config_arg

log = logging.getLogger("boxui.ssh_config")

HOST_SUFFIX = ".boxui"
HEADER = "# boxui ssh-config --install: machines as NAME.boxui; boxui rewrites this file\n"


@dataclass(frozen=True)
class Installed:
    config: Path
    user_config: Path
    include_added: bool


def config_path(dirs: StateDir) -> Path:
    return dirs.root.absolute() / "ssh" / "config"


def known_hosts_file(dirs: StateDir) -> Path:
    return dirs.root.absolute() / "ssh" / "known_hosts"


def is_installed(dirs: StateDir) -> bool:
    return config_path(dirs).is_file()


def render(dirs: StateDir, machines: list[LoadedMachine]) -> tuple[str, str]:
    """The config file and its known_hosts, for `machines`."""
    blocks, pins = [HEADER], []
    for machine in sorted(machines, key=lambda m: m.name):
        directory = dirs.machine_dir(machine.name)
        try:
            keys = load_machine_keys(directory)
            key_type, key_b64 = host_public_key(keys).split()[:2]
        except (GuestImageError, OSError, ValueError):
            blocks.append(f"\n# {machine.name}: no SSH keys boxui made (its own kernel?)\n")
            continue
        alias = machine.name + HOST_SUFFIX
        pins.append(f"{alias} {key_type} {key_b64}\n")
        record = machine.record
        port = record.ssh_port if record is not None else None
        lines = [f"Host {alias}", f"    HostName {GUEST_HOST}"]
        if machine.state in ACTIVE_STATES and port is not None:
            lines.append(f"    Port {port}")
        else:
            why = f"boxui: {machine.name} is {machine.state.value}; start it with: " \
                  f"boxui start {machine.name}"
            lines.append(f"    ProxyCommand sh -c \"echo '{why}' >&2; exit 1\"")
        lines += [
            f"    User {GUEST_USER}",
            f"    IdentityFile {_config_arg(str(keys.client_key.absolute()))}",
            "    IdentitiesOnly yes",
            f"    HostKeyAlias {alias}",
            f"    UserKnownHostsFile {_config_arg(str(known_hosts_file(dirs)))}",
            "    StrictHostKeyChecking yes",
        ]
        blocks.append("\n" + "\n".join(lines) + "\n")
    return "".join(blocks), "".join(pins)


def write_files(dirs: StateDir, machines: list[LoadedMachine]) -> Path:
    config, pins = render(dirs, machines)
    path = config_path(dirs)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write_text(known_hosts_file(dirs), pins, mode=0o600)
    atomic_write_text(path, config, mode=0o600)
    return path


def install(dirs: StateDir, machines: list[LoadedMachine], home: Path) -> Installed:
    """Write the file, and include it from `home`/.ssh/config (once)."""
    path = write_files(dirs, machines)
    user_config, added = ensure_include(home, path)
    return Installed(path, user_config, added)


def include_line(target: Path) -> str:
    """Include takes whitespace-separated globs: a path with a space is quoted."""
    text = str(target)
    if any(ch in text for ch in "\"\n\r\0"):
        raise SshError(f"state dir path {text!r} cannot be named in an ssh_config Include")
    return f'Include "{text}"' if any(ch.isspace() for ch in text) else f"Include {text}"


def ensure_include(home: Path, target: Path) -> tuple[Path, bool]:
    """Add the Include line at the top of ~/.ssh/config unless it is there already;
    returns the file and whether it was added."""
    ssh_dir = home / ".ssh"
    if not ssh_dir.exists():
        ssh_dir.mkdir(mode=0o700, parents=True)
    user_config = ssh_dir / "config"
    real = user_config.resolve() if user_config.is_symlink() else user_config
    line = include_line(target)
    try:
        text = real.read_text(encoding="utf-8")
        mode = real.stat().st_mode & 0o7777
    except FileNotFoundError:
        text, mode = "", 0o600
    except (OSError, UnicodeDecodeError) as exc:
        raise BoxuiError(f"cannot read {user_config}: {exc}") from None
    if any(existing.strip() == line for existing in text.splitlines()):
        return user_config, False
    added = f"# added by boxui ssh-config --install (keep it first: Host blocks scope it)\n" \
            f"{line}\n" + ("\n" + text if text else "")
    try:
        atomic_write_text(real, added, mode=mode)
    except OSError as exc:
        raise BoxuiError(f"cannot write {user_config}: {exc.strerror or exc}") from None
    return user_config, True


def refresh(dirs: StateDir, machines: list[LoadedMachine]) -> bool:
    """Rewrite the file if it is installed; whether it was."""
    if not is_installed(dirs):
        return False
    write_files(dirs, machines)
    return True


async def keep_current(engine: Engine) -> None:
    """Rewrite the installed file after every lifecycle event (a burst of them once),
    for as long as the supervisor runs."""
    subscription = engine.subscribe()
    try:
        event: CloudEvent | Missed = Missed(0)  # at start: things changed while none ran
        while True:
            if isinstance(event, Missed) or event.type.startswith(INSTANCE_TYPE_PREFIX):
                while subscription.get_nowait() is not None:
                    pass  # a burst (a daemon re-adopting many machines): one rewrite
                await asyncio.to_thread(_refresh_logged, engine)
            event = await subscription.get()
    finally:
        subscription.close()


def _refresh_logged(engine: Engine) -> None:
    try:
        if is_installed(engine.dirs):  # a stat, so a daemon without it pays nothing
            write_files(engine.dirs, engine.machines())
    except (BoxuiError, OSError) as exc:
        log.warning("could not rewrite %s: %s", config_path(engine.dirs), exc)
