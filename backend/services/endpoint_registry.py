"""Where each ready service instance takes traffic (host:port): an instance is registered
when it is ready and deregistered, with a reason, when it leaves, so nothing sends
traffic to an instance that cannot answer.

Each change is an event in the log, so a gateway or script following `/v1/events` knows
the set of endpoints without asking.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from backend.errors import BoxuiError
from backend.services.service_events import endpoint_event
from backend.state.engine import Engine
from backend.state.events import now_utc


class EndpointRegistry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._endpoints: dict[str, str] = {}
        self._ready_at: dict[str, datetime] = {}

    def endpoint_of(self, instance: str) -> str | None:
        return self._endpoints.get(instance)

    def ready_at(self, instance: str) -> datetime | None:
        return self._ready_at.get(instance)

    def _address(self, instance: str) -> str | None:
        """127.0.0.1 and the host port of the first published port, else SSH's."""
        try:
            spec = self.engine.store.load_spec(instance)
            record = self.engine.store.load_record(instance)
        except BoxuiError:
            return None
        port = record.ports.get(str(spec.ports[0].guest)) if spec.ports else record.ssh_port
        return f"127.0.0.1:{port}" if port else None

    async def register(self, instance: str, service: str) -> bool:
        """Register a ready instance; False if it already was (or has no address)."""
        if instance in self._endpoints:
            return False
        endpoint = await asyncio.to_thread(self._address, instance)
        if endpoint is None or instance in self._endpoints:
            return False
        self._endpoints[instance] = endpoint
        current = self.engine.projection.get(instance)
        self._ready_at[instance] = current.since if current else now_utc()
        await self.engine.record_event(endpoint_event(
            "registered", service, instance, endpoint, f"{instance} serves on {endpoint}"))
        return True

    async def deregister(self, instance: str, service: str, reason: str) -> None:
        endpoint = self._endpoints.pop(instance, None)
        self._ready_at.pop(instance, None)
        if endpoint is None:
            return
        await self.engine.record_event(endpoint_event(
            "deregistered", service, instance, endpoint, f"{instance} left: {reason}",
            reason=reason))
