"""The Scale API's bodies: a ScaleRequest asks for N replicas of a service and gets a
ScaleResponse with what exists now and what boxui aims for (the two can differ while
instances boot or drain, and the caller needs both to know whether to wait)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from backend.services.service_spec import MAX_REPLICAS, ServiceSpec
from backend.state.lifecycle import InstanceState
from backend.state.machine_limits import MAX_SCALE_REQUEST

AT_CAPACITY = "at maximum capacity"


class ScaleRequest(BaseModel):
    service: str
    replicas: int = Field(ge=0, le=MAX_SCALE_REQUEST, description="desired number of instances")
    request_id: str = Field(default="", max_length=128,
                            description="echoed in the response; one is made if empty")


class InstanceHealth(BaseModel):
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    inflight_requests: int = 0
    healthy: bool = True


class InstanceInfo(BaseModel):
    id: str
    state: InstanceState
    service: str
    created_at: datetime
    ready_at: datetime | None = None
    endpoint: str | None = Field(default=None, description="host:port for traffic")
    health: InstanceHealth = Field(default_factory=InstanceHealth)


class ScaleResponse(BaseModel):
    request_id: str
    accepted: bool
    current_replicas: int = Field(ge=0, description="instances ready or busy now")
    target_replicas: int = Field(ge=0, le=MAX_REPLICAS)
    instances: list[InstanceInfo]
    error: str | None = None


class ServiceView(BaseModel):
    spec: ServiceSpec
    current_replicas: int
    instances: list[InstanceInfo]
