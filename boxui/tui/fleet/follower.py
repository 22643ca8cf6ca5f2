"""One other host, followed for as long as the app runs: connect, list, follow its
changes, and when it stops answering, say so and connect again.

Every kind shares this loop. A connection's life (`follow`) ends by raising why; the
host's machines then show `unknown` with that reason at once, and the next attempt
waits a back-off that doubles with each failure in a row (0.5 s up to 10 s) and starts
over once a connection has been made: a host that is down costs one attempt now and
then, never a tight loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

from backend.errors import BoxuiError
from backend.hosts.address import parse_ssh_address
from backend.hosts.registry import HostDef
from backend.state.events import CloudEvent
from backend.supervision.health import HealthHistory
from boxui.tui.fleet.messages import HostChanged, HostEventsLoaded
from boxui.tui.fleet.snapshot import HostSnapshot

Post = Callable[[Message], object]

RETRY_FIRST, RETRY_MAX = 0.5, 10.0
#: how many of a host's event ids are remembered to tell a repeat after a reconnect
SEEN_EVENTS = 1000
#: SSH keepalive (1 s, 2 missed) declares a silent host lost within this many seconds:
#: it was heard from that long before at most
LOSS_WINDOW = 3.0


class NotOfferedError(BoxuiError):
    code = "invalid_request"


def reason_of(exc: BaseException) -> str:
    """One line for the table: the first error of a group, boxui's own text as it is."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, BoxuiError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def ssh_argv(host: HostDef, command: list[str]) -> list[str]:
    """The system ssh to an SSH host, as `boxui ssh HOST` runs it (with `-t` when a
    command is given: it is interactive)."""
    address = parse_ssh_address(host.address)
    argv = ["ssh"] + (["-t"] if command else [])
    if address.port:
        argv += ["-p", str(address.port)]
    if host.identity:
        argv += ["-i", host.identity]
    target = f"{address.user}@{address.host}" if address.user else address.host
    return [*argv, "--", target, *command]


class Follower:
    """The shared loop; a kind implements `follow` (and `act`, `session_argv`)."""

    def __init__(self, host: HostDef, home: Path) -> None:
        self.host = host
        self.home = home
        self.snapshot = HostSnapshot(host.name, host.kind, host.address)
        self.history = HealthHistory()
        self.connects = 0
        self._post: Post = lambda _message: None
        #: ids of the host's events already posted, oldest first (bounded)
        self._seen: dict[str, None] = {}

    @property
    def name(self) -> str:
        return self.host.name

    def attach(self, post: Post) -> None:
        self._post = post

    def post(self, message: Message) -> None:
        self._post(message)

    async def run(self) -> None:
        delay = RETRY_FIRST
        while True:
            before = self.connects
            try:
                await self.follow()
                reason = f"host {self.name}: the connection ended"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is the host's, shown as its reason
                reason = reason_of(exc)
            self.lost(reason)
            if self.connects != before:
                delay = RETRY_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def follow(self) -> None:
        raise NotImplementedError

    def reached(self, latency_s: float | None) -> None:
        snap = self.snapshot
        snap.reachable, snap.reason, snap.seen_at = True, None, time.time()
        if latency_s is not None:
            snap.latency_ms = round(latency_s * 1000, 1)
        self.connects += 1
        self.post(HostChanged(self.name))

    def first_seen(self, event: CloudEvent) -> bool:
        """True the first time an event id is posted: a host's recent events, loaded
        again at each reconnect, overlap what was shown live before."""
        if event.id in self._seen:
            return False
        self._seen[event.id] = None
        if len(self._seen) > SEEN_EVENTS:
            del self._seen[next(iter(self._seen))]
        return True

    def past(self, events: list[CloudEvent]) -> None:
        """The host's recent events as it was reached, those not shown yet."""
        fresh = [e for e in events if self.first_seen(e)]
        if fresh:
            self.post(HostEventsLoaded(self.name, fresh))

    def heard(self) -> None:
        self.snapshot.seen_at = time.time()

    def lost(self, reason: str) -> None:
        snap = self.snapshot
        if snap.reachable and snap.seen_at is not None:
            snap.seen_at = max(snap.seen_at, time.time() - LOSS_WINDOW)
        snap.reachable, snap.reason = False, reason
        self.post(HostChanged(self.name))

    async def act(self, verb: str, name: str) -> None:
        raise NotOfferedError(f"{verb} is not offered for a {self.host.kind} host "
                              f"({self.name})")

    def session_argv(self, name: str | None) -> list[str]:
        """ssh into machine `name` on this host, or (None) onto the host itself."""
        raise NotOfferedError(f"SSH is not offered for a {self.host.kind} host "
                              f"({self.name})")
