"""The kinds of host, behind one small interface the CLI (and later the app) calls.

`boxui` and `plain` hosts are reached over SSH here; a `libvirt` host is acted on by the
libvirt driver (`libvirt_kind.py`). Where libvirt-python is not installed, a libvirt
host is listed with the reason it cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
from typing import Protocol

from backend.errors import BoxuiError
from backend.hosts.plain_stats import PlainHost
from backend.hosts.registry import HostDef
from backend.hosts.remote_boxui import ENDPOINT_TIMEOUT, REMOTE_BOXUI
from backend.hosts.ssh_link import SshLink
from backend.hosts.status import HostStatus


class HostKind(Protocol):
    host: HostDef

    async def status(self) -> HostStatus:
        """Reachability and the kind's facts; never raises for an unreachable host."""
        ...

    async def close(self) -> None: ...


class BoxuiHost:
    """A remote boxui: reachable when SSH answers; its daemon's machines by state when
    one runs there (status never starts one)."""

    def __init__(self, host: HostDef) -> None:
        self.host = host
        self.link = SshLink(host)

    async def status(self) -> HostStatus:
        status = HostStatus(self.host.name, self.host.kind, self.host.address, False)
        try:
            status.latency_ms = round(await self.link.latency() * 1000, 1)
            done = await self.link.run([REMOTE_BOXUI, "daemon", "status", "--json"],
                                       timeout=ENDPOINT_TIMEOUT)
        except BoxuiError as exc:
            status.reason = str(exc)
            return status
        status.reachable = True
        if done.exit_status == 127:
            status.reason = "no boxui on its PATH"
        elif done.exit_status == 0:
            try:
                status.facts = {"daemon": json.loads(done.stdout)}
            except ValueError:
                status.reason = "its boxui answered something this boxui cannot read"
        else:
            status.facts = {"daemon": None}
        return status

    async def close(self) -> None:
        await self.link.close()


class UnavailableHost:
    """A host whose kind has no driver here: listed, with why."""

    def __init__(self, host: HostDef, reason: str) -> None:
        self.host = host
        self.reason = reason

    async def status(self) -> HostStatus:
        return HostStatus(self.host.name, self.host.kind, self.host.address, False,
                          reason=self.reason)

    async def close(self) -> None:
        return None


def host_kind(host: HostDef) -> HostKind:
    if host.kind == "plain":
        return PlainHost(host)
    if host.kind == "boxui":
        return BoxuiHost(host)
    try:
        # libvirt-python is optional (the `libvirt` extra): without it only libvirt
        # hosts are unavailable, so it is imported when one is asked for
        from backend.hosts.libvirt_kind import LibvirtKind
    except ImportError as exc:
        return UnavailableHost(host, f"the libvirt driver is not available ({exc})")
    return LibvirtKind(host)


async def sample_hosts(hosts: list[HostDef]) -> list[HostStatus]:
    """Every host's status, sampled at once (what `boxui host ls` prints, and what the
    app's host switcher will show): one connection each, closed after."""
    kinds = [host_kind(host) for host in hosts]
    try:
        return list(await asyncio.gather(*(kind.status() for kind in kinds)))
    finally:
        await asyncio.gather(*(kind.close() for kind in kinds), return_exceptions=True)
