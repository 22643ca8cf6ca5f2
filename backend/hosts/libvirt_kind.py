"""A libvirt host in `boxui host ls`: its domains by state, read through the libvirt
driver's one connection (opened for the sample, closed after)."""

from __future__ import annotations

import time
from collections import Counter

from backend.drivers.libvirt.host import LibvirtHost
from backend.errors import BoxuiError
from backend.hosts.registry import HostDef
from backend.hosts.status import HostStatus


class LibvirtKind:
    def __init__(self, host: HostDef) -> None:
        self.host = host
        self.driver = LibvirtHost(host.address)

    async def status(self) -> HostStatus:
        status = HostStatus(self.host.name, self.host.kind, self.host.address, False)
        started = time.perf_counter()
        try:
            await self.driver.open()
            domains = await self.driver.domains()
        except BoxuiError as exc:
            status.reason = str(exc)
            return status
        status.reachable = True
        status.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        status.facts = {
            "domains": len(domains),
            "boxui_machines": sum(1 for d in domains if d.boxui),
            "states": dict(Counter(d.state.value for d in domains)),
        }
        return status

    async def close(self) -> None:
        await self.driver.close()
