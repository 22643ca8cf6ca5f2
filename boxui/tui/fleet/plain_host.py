"""A plain SSH build host: no machines, only its figures (latency, load, memory, disk,
users), sampled every few seconds over one kept connection, for the hosts view."""

from __future__ import annotations

import asyncio

from backend.hosts.plain_stats import PlainHost
from backend.hosts.ssh_link import HostUnreachableError
from boxui.tui.fleet.follower import Follower, ssh_argv

SAMPLE_EVERY = 3.0


class PlainFollower(Follower):
    async def follow(self) -> None:
        plain = PlainHost(self.host)
        try:
            while True:
                status = await plain.status()
                if not status.reachable:
                    raise HostUnreachableError(status.reason or f"host {self.name} is "
                                               "unreachable")
                self.snapshot.facts = status.facts
                self.reached(None if status.latency_ms is None else status.latency_ms / 1000)
                await asyncio.sleep(SAMPLE_EVERY)
        finally:
            await plain.close()

    def session_argv(self, name: str | None) -> list[str]:
        if name is not None:
            return super().session_argv(name)
        return ssh_argv(self.host, [])
