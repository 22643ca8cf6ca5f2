"""A plain SSH build host: reachability, latency, load, memory, disk and logins, sampled
over one kept connection (each figure one command on its own channel, run together)."""

from __future__ import annotations

import asyncio

from backend.errors import BoxuiError
from backend.hosts.registry import HostDef
from backend.hosts.ssh_link import SshLink
from backend.hosts.status import HostStatus

SAMPLES = {
    "load": ["cat", "/proc/loadavg"],
    "memory": ["cat", "/proc/meminfo"],
    "disk": ["df", "-Pk", "/"],
    "users": ["who"],
}


def parse_load(text: str) -> list[float]:
    return [float(part) for part in text.split()[:3]]


def parse_memory(text: str) -> dict[str, int]:
    """Total and used bytes (used: total less what the kernel says is available)."""
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024
              for line in text.splitlines() if line.count(":") == 1 and len(line.split()) >= 2}
    total = fields.get("MemTotal", 0)
    return {"total": total, "used": total - fields.get("MemAvailable", total)}


def parse_disk(text: str) -> dict[str, int]:
    """`df -Pk /`: the root filesystem's size and use in bytes."""
    rows = text.splitlines()
    parts = rows[-1].split() if len(rows) >= 2 else []
    if len(parts) < 4:
        return {}
    return {"total": int(parts[1]) * 1024, "used": int(parts[2]) * 1024}


def parse_users(text: str) -> list[str]:
    return sorted({line.split()[0] for line in text.splitlines() if line.strip()})


class PlainHost:
    """The `plain` kind: nothing runs there but sshd."""

    def __init__(self, host: HostDef) -> None:
        self.host = host
        self.link = SshLink(host)

    async def status(self) -> HostStatus:
        status = HostStatus(self.host.name, self.host.kind, self.host.address, False)
        try:
            status.latency_ms = round(await self.link.latency() * 1000, 1)
            names = list(SAMPLES)
            done = await asyncio.gather(*(self.link.run(SAMPLES[n]) for n in names))
        except BoxuiError as exc:
            status.reason = str(exc)
            return status
        out = {name: result.stdout for name, result in zip(names, done, strict=True)}
        status.reachable = True
        try:
            status.facts = {"load": parse_load(out["load"]),
                            "memory": parse_memory(out["memory"]),
                            "disk": parse_disk(out["disk"]), "users": parse_users(out["users"])}
        except (ValueError, IndexError):
            status.reason = "its /proc or df answered in a form boxui cannot read"
        return status

    async def close(self) -> None:
        await self.link.close()
