"""Mounts and ports as the new-machine form takes them: the same text as the CLI's
`--mount HOST_DIR[:GUEST_DIR][:ro]` and `--port [HOST:]GUEST[/udp]`, several in one field
separated by spaces, checked as the user types with the parsers the CLI uses, so the form
and the CLI can never disagree about what a mount or a forward is.
"""

from __future__ import annotations

from pydantic import ValidationError

from backend.errors import BoxuiError
from backend.state.machine_spec import MachineSpec, check_distinct_ports
from backend.state.mount_spec import MountError, check_mount_list, check_mount_sources, parse_mount
from backend.state.port_mapping import PortMapping
from backend.state.validation_text import describe_validation_error


class ForwardsError(BoxuiError):
    code = "invalid_request"


def split_entries(text: str) -> list[str]:
    return text.split()


def mount_error(text: str) -> str | None:
    """Why the mounts field cannot be used as it is (a missing host dir included), or None."""
    try:
        mounts = [parse_mount(entry) for entry in split_entries(text)]
        check_mount_sources("this machine", mounts)
        check_mount_list(mounts)
    except (MountError, ValueError) as exc:
        return str(exc).removeprefix("--mount ").removeprefix("this machine: ")
    return None


def port_error(text: str) -> str | None:
    """Why the ports field cannot be used as it is, or None."""
    try:
        check_distinct_ports([PortMapping.parse(entry) for entry in split_entries(text)])
    except ValueError as exc:
        return str(exc)
    return None


def apply_forwards(spec: MachineSpec, mounts: list[str], ports: list[str]) -> MachineSpec:
    """`spec` with the mounts and ports the form asked for (nothing asked: unchanged)."""
    if not mounts and not ports:
        return spec
    try:
        update = {"mounts": [parse_mount(m) for m in mounts] or spec.mounts,
                  "ports": [PortMapping.parse(p) for p in ports] or spec.ports}
        return MachineSpec.model_validate({**spec.model_dump(), **update})
    except ValidationError as exc:
        raise ForwardsError(describe_validation_error(exc)) from None
    except (MountError, ValueError) as exc:
        raise ForwardsError(str(exc)) from None
