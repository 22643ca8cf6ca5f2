"""`hosts.toml` in the state dir: the hosts boxui knows, validated, written atomically.

`local` is the machine boxui runs on: always there, never stored, never removed. The host
commands act on (`boxui host use`) is kept in its own small file, `current-host`, so the
native exec client can tell with one stat that it must hand a command to Python.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.errors import BoxuiError
from backend.hosts.address import parse_ssh_address
from backend.hosts.selection import CURRENT_FILE, HOST_ENV, LOCAL
from backend.state.atomic_write import atomic_write_text
from backend.state.names import NAME_RULE, is_valid_name
from backend.state.state_dir import StateDir

HOSTS_FILE = "hosts.toml"

HostKindName = Literal["boxui", "plain", "libvirt"]


class HostsFileError(BoxuiError):
    code = "invalid_request"


class UnknownHostError(BoxuiError):
    code = "not_found"


class HostDef(BaseModel):
    """One host. `address`: `ssh://...` for the SSH kinds, a libvirt URI for libvirt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(exclude=True)
    kind: HostKindName
    address: str
    identity: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_valid_name(value) or value == LOCAL:
            raise ValueError(f"invalid host name {value!r}: use {NAME_RULE}, not 'local'")
        return value

    def check(self) -> HostDef:
        """Refuse an address that does not fit the kind (a one-line reason)."""
        if self.kind == "libvirt":
            if "://" not in self.address or any(c.isspace() for c in self.address):
                raise HostsFileError(f"{self.address!r} is not a libvirt URI "
                                     "(e.g. qemu:///system, qemu+ssh://user@host/system)")
        else:
            parse_ssh_address(self.address)
        if self.identity is not None and not Path(self.identity).is_absolute():
            raise HostsFileError(f"identity {self.identity!r}: give an absolute path")
        return self


def hosts_path(dirs: StateDir) -> Path:
    return dirs.root / HOSTS_FILE


def load_hosts(dirs: StateDir) -> dict[str, HostDef]:
    """Every stored host by name; a file that is not valid is a one-line error naming
    it, and is never overwritten (a later write refuses the same way)."""
    path = hosts_path(dirs)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HostsFileError(f"{path} cannot be read: {exc}") from None
    table = raw.get("hosts", {})
    if set(raw) - {"hosts"} or not isinstance(table, dict):
        raise HostsFileError(f"{path}: only [hosts.NAME] tables belong there")
    hosts: dict[str, HostDef] = {}
    for name, fields in table.items():
        try:
            hosts[name] = HostDef.model_validate({**fields, "name": name}).check()
        except (ValidationError, TypeError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc
            raise HostsFileError(f"{path}: host {name!r}: {reason}") from None
        except BoxuiError as exc:
            raise HostsFileError(f"{path}: host {name!r}: {exc}") from None
    return hosts


def _write(dirs: StateDir, hosts: dict[str, HostDef]) -> None:
    body = {"hosts": {name: host.model_dump(exclude_none=True)
                      for name, host in sorted(hosts.items())}}
    atomic_write_text(hosts_path(dirs), tomli_w.dumps(body))


@contextmanager
def _editing(dirs: StateDir) -> Iterator[dict[str, HostDef]]:
    """The stored hosts, under a lock, written back when the block ends without error:
    two `host add` at once both land."""
    fd = os.open(dirs.root / f".{HOSTS_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        hosts = load_hosts(dirs)
        yield hosts
        _write(dirs, hosts)
    finally:
        os.close(fd)


def add_host(dirs: StateDir, host: HostDef) -> None:
    host.check()
    with _editing(dirs) as hosts:
        if host.name in hosts:
            raise HostsFileError(f"host {host.name!r} exists already (boxui host rm "
                                 f"{host.name} first)")
        hosts[host.name] = host


def remove_host(dirs: StateDir, name: str) -> None:
    if name == LOCAL:
        raise HostsFileError("the local host is always there and cannot be removed")
    with _editing(dirs) as hosts:
        if hosts.pop(name, None) is None:
            raise UnknownHostError(f"no host {name!r} (boxui host ls lists them)")
    if stored_current(dirs) == name:
        use_host(dirs, LOCAL)


def get_host(dirs: StateDir, name: str) -> HostDef | None:
    """The host called `name`, None for local; unknown names are a one-line error."""
    if name == LOCAL:
        return None
    host = load_hosts(dirs).get(name)
    if host is None:
        raise UnknownHostError(f"no host {name!r} (boxui host ls lists them; "
                               "boxui host add adds one)")
    return host


def stored_current(dirs: StateDir) -> str:
    try:
        text = (dirs.root / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return LOCAL
    except OSError as exc:
        raise HostsFileError(f"{dirs.root / CURRENT_FILE} cannot be read: {exc}") from None
    return text or LOCAL


def use_host(dirs: StateDir, name: str) -> None:
    """Make `name` the host commands act on; `local` removes the file (the fast exec
    path then stays fast)."""
    path = dirs.root / CURRENT_FILE
    if name == LOCAL:
        path.unlink(missing_ok=True)
        return
    get_host(dirs, name)
    atomic_write_text(path, name + "\n")


def selected_host(dirs: StateDir, given: str | None, environ: dict[str, str]) -> str:
    """Which host one command acts on: `--host`, else BOXUI_HOST, else the stored one."""
    return given or environ.get(HOST_ENV) or stored_current(dirs)
