"""Events of services and endpoints, in the same CloudEvents log as machine events.

`dev.boxui.service.v1.*` (created, scaled, removed, degraded) have the service as subject;
`dev.boxui.endpoint.v1.registered|deregistered` have the instance as subject and say
where traffic goes (host:port) and, when it leaves, why.
"""

from __future__ import annotations

import uuid
from typing import Any

from backend.state.events import SOURCE, CloudEvent, now_utc

SERVICE_TYPE_PREFIX = "dev.boxui.service.v1."
ENDPOINT_TYPE_PREFIX = "dev.boxui.endpoint.v1."


def service_event(kind: str, service: str, message: str, **data: Any) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source=SOURCE, type=SERVICE_TYPE_PREFIX + kind,
                      time=now_utc(), subject=service,
                      data={"service": service, "message": message, **data})


def endpoint_event(kind: str, service: str, instance: str, endpoint: str | None,
                   message: str, **data: Any) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source=SOURCE, type=ENDPOINT_TYPE_PREFIX + kind,
                      time=now_utc(), subject=instance,
                      data={"service": service, "instance": instance, "endpoint": endpoint,
                            "message": message, **data})
