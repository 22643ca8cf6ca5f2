"""Every other host in the registry, followed at once in one task group, and what the
app draws of them: rows keyed `NAME@HOST`, the hosts view's lines, actions routed to
the host a row belongs to. Nothing here touches the local machines."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from watchfiles import Change, awatch

from backend.errors import BoxuiError
from backend.hosts.registry import HOSTS_FILE, HostDef, load_hosts
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir
from backend.supervision.health import HealthHistory
from boxui.tui.fleet.boxui_host import BoxuiFollower
from boxui.tui.fleet.follower import Follower, Post
from boxui.tui.fleet.libvirt_host import LibvirtFollower
from boxui.tui.fleet.messages import HostsChanged
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
    def __init__(self, followers: Sequence[Follower] = (), problem: str | None = None, *,
                 registry: Path | None = None,
                 make: Callable[[HostDef], Follower] | None = None) -> None:
        self.followers: dict[str, Follower] = {f.name: f for f in followers}
        #: why the registry could not be read (shown once; the app runs without hosts)
        self.problem = problem
        #: the state dir whose `hosts.toml` is watched while the app runs (None: the
        #: followers given are all there is, as in tests and the bench)
        self.registry = registry
        self._make = make or (lambda host: follower_for(host, registry or Path(".")))
        #: the definition each follower was made from, to tell an edited host
        self._defs = {f.name: f.host for f in followers}
        self._post: Post | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def from_registry(cls, home: Path) -> Fleet:
        try:
            hosts = load_hosts(StateDir(home))  # the app has opened (and vetted) it
        except BoxuiError as exc:
            return cls(problem=str(exc), registry=home)
        return cls([follower_for(host, home) for host in hosts.values()], registry=home)

    @property
    def hosts(self) -> list[str]:
        return sorted(self.followers)

    def snapshots(self) -> list[HostSnapshot]:
        return [self.followers[name].snapshot for name in self.hosts]

    async def run(self, post: Post) -> None:
        """Follow every host until cancelled (the app closes), and the registry: hosts
        added or removed while the app runs are followed or dropped. One host's trouble
        is its own (each follower catches its failures and tries again)."""
        self._post = post
        for follower in self.followers.values():
            self._start(follower)
        try:
            if self.registry is None:
                await asyncio.Event().wait()
            else:
                await self._watch(self.registry, post)
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, home: Path, post: Post) -> None:
        """`boxui host add|rm` replace `hosts.toml` by a rename: inotify tells of it."""
        def ours(_change: Change, path: str) -> bool:
            return os.path.basename(path) == HOSTS_FILE

        async for _ in awatch(home, watch_filter=ours, recursive=False, debounce=100,
                              step=20):
            try:
                hosts = await asyncio.to_thread(load_hosts, StateDir(home))
            except BoxuiError as exc:  # a hand edit gone wrong: keep following what was
                post(HostsChanged(problem=str(exc)))
                continue
            if self.apply(hosts):
                post(HostsChanged())

    def apply(self, hosts: Mapping[str, HostDef]) -> bool:
        """Follow the registry as it is now: a removed (or redefined) host's follower
        stops and its rows go; a new one starts. True when anything changed."""
        changed = False
        for name in [n for n in self.followers if hosts.get(n) != self._defs.get(n)]:
            changed = True
            del self.followers[name], self._defs[name]
            if (task := self._tasks.pop(name, None)) is not None:
                task.cancel()  # its `follow` closes its connection as it ends
        for name, host in hosts.items():
            if name not in self.followers:
                changed = True
                self.followers[name] = follower = self._make(host)
                self._defs[name] = host
                self._start(follower)
        return changed

    def _start(self, follower: Follower) -> None:
        if self._post is None:
            return  # not running yet: `run` starts it
        follower.attach(self._post)
        self._tasks[follower.name] = asyncio.create_task(follower.run(),
                                                         name=f"host {follower.name}")

    # --- rows --------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every remote machine's row key (`NAME@HOST`), for the command line."""
        return [host_key(name, f.name) for f in self.followers.values()
                for name in f.snapshot.machines]

    def states(self) -> Iterable[str]:
        """Every remote machine's state as shown (`unknown` while its host is lost),
        for the header's counts."""
        for follower in self.followers.values():
            for state, count in follower.snapshot.counts().items():
                yield from itertools.repeat(state, count)

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

    def row_for(self, key: str, now: float, busy: Mapping[str, str],
                frame: int) -> tuple[dict[str, str], str] | None:
        """One remote row as it is now (None: no such machine or host any more): the
        table reads it when it draws a row that changed off screen, so a host's sample
        round builds only the rows on screen, as a local one does."""
        name, host = split_key(key)
        follower = self.followers.get(host)
        machine = follower.snapshot.machines.get(name) if follower is not None else None
        if follower is None or machine is None:
            return None
        snap = follower.snapshot
        _, cells, state = self._row(snap, snap.shown(machine), now, busy, frame)
        return cells, state

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
