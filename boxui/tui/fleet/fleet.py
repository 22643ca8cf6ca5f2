"""Every other host in the registry, followed at once in one task group, and what the
app draws of them: rows keyed `NAME@HOST`, the hosts view's lines, actions routed to
the host a row belongs to. Nothing here touches the local machines."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from backend.errors import BoxuiError
from backend.hosts.registry import HostDef, load_hosts
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir
from backend.supervision.health import HealthHistory
from boxui.tui.fleet.boxui_host import BoxuiFollower
from boxui.tui.fleet.follower import Follower, Post
from boxui.tui.fleet.libvirt_host import LibvirtFollower
from boxui.tui.fleet.plain_host import PlainFollower
from boxui.tui.fleet.snapshot import LOCAL, HostSnapshot, host_key, split_key
from boxui.tui.text_filter import TextFilter
from boxui.tui.widgets.machine_table import row_cells

Rows = Iterable[tuple[str, dict[str, str], str]]

_KINDS: dict[str, type[Follower]] = {
    "boxui": BoxuiFollower, "libvirt": LibvirtFollower, "plain": PlainFollower,
}


def follower_for(host: HostDef, home: Path) -> Follower:
    return _KINDS[host.kind](host, home)


class Fleet:
    def __init__(self, followers: Sequence[Follower] = (), problem: str | None = None) -> None:
        self.followers: dict[str, Follower] = {f.name: f for f in followers}
        #: why the registry could not be read (shown once; the app runs without hosts)
        self.problem = problem

    @classmethod
    def from_registry(cls, home: Path) -> Fleet:
        try:
            hosts = load_hosts(StateDir(home))  # the app has opened (and vetted) it
        except BoxuiError as exc:
            return cls(problem=str(exc))
        return cls([follower_for(host, home) for host in hosts.values()])

    @property
    def hosts(self) -> list[str]:
        return sorted(self.followers)

    def snapshots(self) -> list[HostSnapshot]:
        return [self.followers[name].snapshot for name in self.hosts]

    async def run(self, post: Post) -> None:
        """Follow every host until cancelled (the app closes); one host's trouble is its
        own (each follower catches its failures and tries again)."""
        if not self.followers:
            return
        async with asyncio.TaskGroup() as group:
            for follower in self.followers.values():
                follower.attach(post)
                group.create_task(follower.run(), name=f"host {follower.name}")

    # --- rows --------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every remote machine's row key (`NAME@HOST`), for the command line."""
        return [host_key(name, f.name) for f in self.followers.values()
                for name in f.snapshot.machines]

    def owns(self, key: str | None) -> bool:
        return key is not None and split_key(key)[1] in self.followers

    def rows(self, now: float, busy: Mapping[str, str], frame: int, host: str | None,
             wanted: TextFilter) -> Rows:
        """Every remote machine the host and text filters keep, as the table's rows."""
        if host == LOCAL:
            return
        for follower in self.followers.values():
            if host is not None and follower.name != host:
                continue
            snap = follower.snapshot
            for machine in snap.machines.values():
                shown = snap.shown(machine)
                if wanted.matches(machine.name, shown.state.value, snap.name):
                    yield self._row(snap, shown, now, busy, frame)

    def rows_of(self, host: str, names: Iterable[str], now: float, busy: Mapping[str, str],
                frame: int) -> Rows:
        """The rows of these machines of `host` (after their health changed)."""
        snap = self.followers[host].snapshot
        for name in names:
            machine = snap.machines.get(name)
            if machine is not None:
                yield self._row(snap, snap.shown(machine), now, busy, frame)

    @staticmethod
    def _row(snap: HostSnapshot, machine: LoadedMachine, now: float,
             busy: Mapping[str, str], frame: int) -> tuple[str, dict[str, str], str]:
        key = host_key(machine.name, snap.name)
        cells = row_cells(machine, snap.health.get(machine.name), now, busy.get(key), frame,
                          host=snap.name)
        return key, cells, machine.state.value

    def detail(self, key: str) -> tuple[LoadedMachine | None, HealthHistory | None]:
        """The machine under the cursor (as shown) and its host's health history."""
        name, host = split_key(key)
        follower = self.followers.get(host)
        machine = follower.snapshot.machines.get(name) if follower else None
        if follower is None or machine is None:
            return None, None
        return follower.snapshot.shown(machine), follower.history

    # --- actions -----------------------------------------------------------------------

    async def act(self, verb: str, key: str) -> None:
        """`verb` on a remote row, by its host (one line when the kind does not offer
        it, or the host does not answer)."""
        name, host = split_key(key)
        await self.followers[host].act(verb, name)

    def session_argv(self, key: str) -> list[str]:
        """ssh into a remote row's machine (`NAME@HOST`), or onto a host (`HOST`)."""
        if "@" not in key:
            return self.followers[key].session_argv(None)
        name, host = split_key(key)
        return self.followers[host].session_argv(name)
