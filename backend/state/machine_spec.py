"""`machine.toml`: the desired spec of one machine, which a user may edit by hand.

Because people edit it, every way it can be wrong must come back as one line naming the
file and the key (an unknown key is an error, not silently ignored: a typo such as
`memmory_mib` would otherwise be a setting that quietly does nothing).
"""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from backend.errors import InvalidNameError, SpecError
from backend.state.accelerator import AccelRequest
from backend.state.atomic_write import atomic_write_text
from backend.state.disk_size import parse_size
from backend.state.events import now_utc
from backend.state.machine_limits import MAX_DISK_GIB, MAX_MEMORY_MIB, MAX_VCPUS
from backend.state.mount_spec import MAX_MOUNTS, MountSpec, check_mount_list
from backend.state.names import validate_name
from backend.state.port_mapping import PortMapping
from backend.state.validation_text import describe_validation_error

__all__ = ["MAX_DISK_GIB", "MAX_MEMORY_MIB", "MAX_VCPUS", "LivenessSpec", "MachineSpec",
           "StopSettings", "read_spec", "render_spec", "write_spec"]

SPEC_SCHEMA_VERSION = 1
MAX_ENV = 128
MAX_PORTS = 16
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

RestartPolicy = Literal["never", "on-failure", "always"]
#: no stop step may wait longer than an hour (a typo of 30000 would wedge a stop)
MAX_STOP_STEP_SECONDS = 3600


class StopSettings(BaseModel):
    """`[stop]`: how long each step of a graceful stop may take before the next, harsher
    one (ACPI power-off, QMP quit, SIGTERM, SIGKILL). A guest that needs longer to shut
    down its services gets a longer `acpi_timeout`; a hung one is killed regardless."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    acpi_timeout: StrictFloat = Field(default=30.0, gt=0, le=MAX_STOP_STEP_SECONDS)
    quit_timeout: StrictFloat = Field(default=5.0, gt=0, le=MAX_STOP_STEP_SECONDS)
    sigterm_timeout: StrictFloat = Field(default=5.0, gt=0, le=MAX_STOP_STEP_SECONDS)
    sigkill_timeout: StrictFloat = Field(default=5.0, gt=0, le=MAX_STOP_STEP_SECONDS)
MAX_PROVISION_SCRIPTS = 32
TEMPLATE_REF = re.compile(r"[a-z0-9][a-z0-9-]{0,62}:[a-z0-9][a-z0-9-]{0,62}")


class LivenessSpec(BaseModel):
    """A guest liveness probe: `exec`, a command run over SSH that must exit 0, or
    `port`, a guest port that must answer on its forwarded host port; every `interval`
    seconds, each within `timeout`; after `failures` in a row the machine is unhealthy."""

    model_config = ConfigDict(extra="forbid")

    exec: str | None = Field(default=None, min_length=1, max_length=4096)
    port: int | None = Field(default=None, ge=1, le=65535)
    interval: float = Field(default=10, ge=1, le=3600)
    timeout: float = Field(default=5, gt=0, le=600)
    failures: int = Field(default=3, ge=1, le=100)

    @field_validator("exec")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ch in value for ch in "\n\r\0"):
            raise ValueError("must be a single line without NUL")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> LivenessSpec:
        if (self.exec is None) == (self.port is None):
            raise ValueError("give exactly one of exec (a command) or port (a guest port)")
        return self


class MachineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = Field(default=SPEC_SCHEMA_VERSION, ge=1)
    name: str
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    memory_mib: int = Field(default=256, ge=64, le=MAX_MEMORY_MIB)
    disk_gib: int = Field(default=0, ge=0, le=MAX_DISK_GIB)
    #: None: the default guest image that boxui builds itself
    kernel: Path | None = None
    initrd: Path | None = None
    disk_image: Path | None = None
    #: an OS image from the image store (`boxui image ls`): the machine boots it from its
    #: own copy-on-write disk, `disk.qcow2` in its directory, sized `disk` (e.g. "20G")
    image: str | None = None
    disk: str | None = None
    cmdline: str = ""
    distro: str = "boxui-busybox"
    ssh_key: Path | None = None
    hypervisor: Literal["qemu"] = "qemu"
    accel: AccelRequest = "auto"
    restart: RestartPolicy = "never"
    #: start this machine whenever a daemon starts (after crash recovery), e.g. at boot
    #: under `boxui daemon install`'s systemd unit
    autostart: StrictBool = False  # strict: `autostart = "no"` must not read as true
    #: the service this machine is an instance of (None: a machine of its own)
    service: str | None = None
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV)
    ports: list[PortMapping] = Field(default_factory=list, max_length=MAX_PORTS)
    stop: StopSettings = Field(default_factory=StopSettings)
    #: "<template_id>:<role>" this machine was made from, and the revision it restores
    template: str | None = None
    template_revision: str | None = None
    #: a guest liveness probe (None: only the hypervisor's heartbeat is checked)
    liveness: LivenessSpec | None = None
    #: scripts (absolute host paths) run once as root after the first boot; their
    #: contents are copied into the machine when it is created (`provision/`)
    provision: list[Path] = Field(default_factory=list, max_length=MAX_PROVISION_SCRIPTS)
    #: host folders shared with the guest through virtio-9p (see `mount_spec`)
    mounts: list[MountSpec] = Field(default_factory=list, max_length=MAX_MOUNTS)
    created_at: datetime = Field(default_factory=now_utc)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_name(value)
        except InvalidNameError as exc:  # pydantic only collects ValueError
            raise ValueError(str(exc)) from None

    @field_validator("service")
    @classmethod
    def _valid_service(cls, value: str | None) -> str | None:
        return None if value is None else cls._valid_name(value)

    @field_validator("image")
    @classmethod
    def _valid_image(cls, value: str | None) -> str | None:
        return None if value is None else cls._valid_name(value)

    @field_validator("disk")
    @classmethod
    def _valid_disk(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @model_validator(mode="after")
    def _disk_needs_image(self) -> MachineSpec:
        if self.disk is not None and self.image is None:
            raise ValueError("disk: needs an image (set image too)")
        if self.image is not None and (self.kernel or self.initrd or self.disk_image):
            raise ValueError("image: cannot be combined with kernel, initrd or disk_image")
        return self

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SPEC_SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is newer than this boxui understands "
                f"({SPEC_SCHEMA_VERSION}); upgrade boxui"
            )
        return value

    @model_validator(mode="after")
    def _probed_port_is_forwarded(self) -> MachineSpec:
        probe = self.liveness
        if probe is not None and probe.port is not None and probe.port != 22 and \
                probe.port not in {p.guest for p in self.ports}:
            raise ValueError(f"liveness.port {probe.port} is not a published port "
                             "(22, or a guest port in ports)")
        return self

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, value: list[PortMapping]) -> list[PortMapping]:
        """One forward per guest port and per fixed host port (of each protocol): the
        runtime record names a forward by its guest port."""
        return check_distinct_ports(value)

    @field_validator("provision")
    @classmethod
    def _absolute_scripts(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.is_absolute() or "\0" in str(path):
                raise ValueError(f"{path}: must be an absolute path")
        return value

    @field_validator("mounts")
    @classmethod
    def _distinct_mounts(cls, value: list[MountSpec]) -> list[MountSpec]:
        return check_mount_list(value)

    @model_validator(mode="after")
    def _mounts_need_cold_boot(self) -> MachineSpec:
        # a snapshot's guest was saved without these devices: it cannot be given them
        if self.mounts and self.template is not None:
            raise ValueError("mounts: a machine made from a template restores a snapshot, "
                             "which cannot be given shared folders")
        return self

    @field_validator("template")
    @classmethod
    def _template_ref(cls, value: str | None) -> str | None:
        if value is not None and not TEMPLATE_REF.fullmatch(value):
            raise ValueError("must be <template_id>:<role>, each a valid name")
        return value

    @field_validator("template_revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{16}", value):
            raise ValueError("must be 16 hex digits")
        return value

    @field_validator("cmdline", "distro")
    @classmethod
    def _single_line(cls, value: str) -> str:
        if any(ch in value for ch in "\n\r\0"):
            raise ValueError("must be a single line without NUL")
        return value


def check_distinct_ports(ports: list[PortMapping]) -> list[PortMapping]:
    guests: set[str] = set()
    hosts: set[tuple[int, str]] = set()
    for mapping in ports:
        if mapping.key in guests:
            raise ValueError(f"guest port {mapping.key} is forwarded twice")
        guests.add(mapping.key)
        if mapping.host is not None:
            if (mapping.host, mapping.protocol) in hosts:
                raise ValueError(f"host port {mapping.host}/{mapping.protocol} is used twice")
            hosts.add((mapping.host, mapping.protocol))
    return ports


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Names a shell accepts; values on one line (they become `export` lines)."""
    for key, value in env.items():
        if not ENV_KEY.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key[:40]!r}")
        if any(ch in value for ch in "\n\r\0") or len(value) > 4096:
            raise ValueError(f"{key}: value must be one line of at most 4096 characters")
    return env


def parse_spec(text: str, path: Path) -> MachineSpec:
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, f"invalid TOML: {exc}") from None
    try:
        return MachineSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(path, describe_validation_error(exc)) from None


def read_spec(path: Path) -> MachineSpec:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(path, "file is missing") from None
    except OSError as exc:
        raise SpecError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(path, f"not UTF-8 text (byte {exc.start})") from None
    if "\0" in text:
        raise SpecError(path, "contains NUL bytes (file is corrupt)")
    return parse_spec(text, path)


def render_spec(spec: MachineSpec) -> str:
    data = spec.model_dump(mode="python", exclude_none=True)
    for key in ("env", "ports", "provision", "mounts"):  # a plain machine's file stays
        if not data[key]:
            del data[key]
    if spec.mounts:  # `guest = ""` and `readonly = false` say nothing
        data["mounts"] = [mount.model_dump(exclude_defaults=True) for mount in spec.mounts]
    if spec.stop == StopSettings():
        del data["stop"]
    for key, value in list(data.items()):
        if isinstance(value, Path):
            data[key] = str(value)
    if "provision" in data:
        data["provision"] = [str(path) for path in data["provision"]]
    header = "# boxui machine spec: edit freely; boxui reloads it and refuses invalid keys.\n"
    return header + tomli_w.dumps(data)


def write_spec(path: Path, spec: MachineSpec) -> None:
    atomic_write_text(path, render_spec(spec), mode=0o600)
