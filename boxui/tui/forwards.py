"""Mounts and ports as the new-machine form takes them: the same text as the CLI's
`--mount HOST_DIR[:GUEST_DIR][:ro]` and `--port [HOST:]GUEST[/udp]`, several in one field
separated by spaces, checked as the user types.

`apply_forwards` puts them into the spec's `mounts` (`{host, guest, read_only}`) and
`ports` fields: as the text itself, or parsed by `PortMapping` where the spec holds those
(as services' instances do). A spec that cannot hold what was asked (no `mounts` field
yet, no UDP forwards yet) refuses it in one line rather than drop it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from backend.errors import BoxuiError
from backend.state.machine_spec import MachineSpec
from backend.state.port_mapping import PortMapping

_PORT = re.compile(r"^(?:(\d{1,5}):)?(\d{1,5})(/udp|/tcp)?$")
#: where a mount goes when the text names no guest dir
DEFAULT_GUEST_DIR = "/mnt"


class ForwardsUnsupportedError(BoxuiError):
    code = "invalid_request"


def split_entries(text: str) -> list[str]:
    return text.split()


def parse_mount(text: str) -> dict[str, object]:
    """`HOST_DIR[:GUEST_DIR][:ro]` -> `{host, guest, read_only}`; ValueError says why."""
    parts = text.split(":")
    read_only = parts[-1] == "ro" and len(parts) > 1
    if read_only or parts[-1] == "rw":
        parts = parts[:-1]
    if not 1 <= len(parts) <= 2 or not parts[0]:
        raise ValueError(f"{text!r}: use HOST_DIR[:GUEST_DIR][:ro]")
    host = Path(parts[0]).expanduser()
    if not host.is_absolute():
        host = host.absolute()
    if not host.is_dir():
        raise ValueError(f"{text!r}: {host} is not a directory on this host")
    guest = parts[1] if len(parts) == 2 else f"{DEFAULT_GUEST_DIR}/{host.name or 'host'}"
    if not guest.startswith("/"):
        raise ValueError(f"{text!r}: the guest dir must be absolute (e.g. /src)")
    return {"host": str(host), "guest": guest, "read_only": read_only}


def check_port(text: str) -> str:
    """`[HOST:]GUEST[/udp]`, returned as given; ValueError says why."""
    match = _PORT.match(text)
    if match is None:
        raise ValueError(f"{text!r}: use [HOST:]GUEST[/udp], e.g. 8080:80")
    host, guest = match.group(1), int(match.group(2))
    if not 1 <= guest <= 65535:
        raise ValueError(f"{text!r}: the guest port must be 1-65535")
    if host is not None and not 1024 <= int(host) <= 65535:
        raise ValueError(f"{text!r}: the host port must be 1024-65535")
    return text


def mount_error(text: str) -> str | None:
    for entry in split_entries(text):
        try:
            parse_mount(entry)
        except ValueError as exc:
            return str(exc)
    return None


def port_error(text: str) -> str | None:
    entries = split_entries(text)
    for entry in entries:
        try:
            check_port(entry)
        except ValueError as exc:
            return str(exc)
    hosts = [e.split(":")[0] for e in entries if ":" in e]
    if len(hosts) != len(set(hosts)):
        return "each host port can be forwarded once"
    return None


def apply_forwards(spec: MachineSpec, mounts: list[str], ports: list[str]) -> MachineSpec:
    """`spec` with the mounts and ports the form asked for (nothing asked: unchanged)."""
    update: dict[str, object] = {}
    if mounts:
        update["mounts"] = [parse_mount(m) for m in mounts]
    if ports:
        update["ports"] = [check_port(p) for p in ports]
    missing = [field for field in update if field not in MachineSpec.model_fields]
    if missing:
        raise ForwardsUnsupportedError(
            f"this boxui cannot give a machine {' or '.join(missing)} yet; create it "
            "without them")
    if not update:
        return spec
    base = spec.model_dump()
    try:
        return MachineSpec.model_validate({**base, **update})
    except ValidationError:
        if not ports:
            raise
    try:  # a spec whose ports are PortMappings: parse the text the way services do
        update["ports"] = [PortMapping.parse(p).model_dump() for p in ports]
        return MachineSpec.model_validate({**base, **update})
    except (ValueError, ValidationError) as exc:
        raise ForwardsUnsupportedError(
            f"ports {' '.join(ports)}: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return str(exc.errors()[0].get("msg", exc))
    return str(exc)
