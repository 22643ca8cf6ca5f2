"""A service: N identical instances of one machine template, kept at a desired count.

Its desired state (`replicas`) is written before boxui acts on it, so after a crash the
next supervisor knows what to reconcile to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.errors import BoxuiError, InvalidNameError
from backend.state.accelerator import AccelRequest
from backend.state.events import now_utc
from backend.state.machine_spec import MAX_ENV, MAX_MEMORY_MIB, MAX_PORTS, MAX_VCPUS, check_env
from backend.state.names import validate_name
from backend.state.port_mapping import PortMapping

SERVICE_SCHEMA_VERSION = 1
MAX_REPLICAS = 64
#: an instance is named `<service>-<6 hex>`, and a machine name has at most 63 characters
MAX_SERVICE_NAME = 56


class ServiceNotFoundError(BoxuiError):
    code = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no service named {name!r}")


class ServiceExistsError(BoxuiError):
    code = "exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"a service named {name!r} already exists")


def validate_service_name(name: str) -> str:
    validate_name(name)
    if len(name) > MAX_SERVICE_NAME:
        raise InvalidNameError(f"service name {name[:20]!r}... is longer than "
                               f"{MAX_SERVICE_NAME} characters")
    return name


class ServiceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=SERVICE_SCHEMA_VERSION, ge=1,
                                le=SERVICE_SCHEMA_VERSION)
    name: str
    #: the guest every instance boots: boxui's own image, or a template ("ID[:ROLE]")
    #: whose snapshot each instance restores from (cold-booting its image if it has none)
    image: Literal["default"] = "default"
    template: str | None = None
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    memory_mib: int = Field(default=256, ge=64, le=MAX_MEMORY_MIB)
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV)
    ports: list[PortMapping] = Field(default_factory=list, max_length=MAX_PORTS)
    replicas: int = Field(default=0, ge=0, le=MAX_REPLICAS, description="desired instances")
    max_replicas: int = Field(default=4, ge=1, le=MAX_REPLICAS)
    drain_timeout: float = Field(default=30.0, gt=0, le=3600,
                                 description="seconds scale-down waits for in-flight work")
    accel: AccelRequest = "auto"
    created_at: datetime = Field(default_factory=now_utc)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_service_name(value)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("template")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        template_id, _, role = value.partition(":")
        for part in (template_id, role) if role else (template_id,):
            try:
                validate_name(part)
            except InvalidNameError:
                raise ValueError(f"{value!r}: use ID or ID:ROLE (a-z, 0-9, '-')") from None
        return value

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        if self.replicas > self.max_replicas:
            raise ValueError(f"replicas {self.replicas} is above max_replicas "
                             f"{self.max_replicas}")
        if self.max_replicas > 1 and any(p.host is not None for p in self.ports):
            raise ValueError("a fixed host port can serve one instance only: publish the "
                             "guest port alone (host port picked per instance) or set "
                             "max_replicas to 1")
        return self
