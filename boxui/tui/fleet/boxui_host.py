"""A remote boxui, followed through its own control API over one SSH connection.

The remote daemon's API socket (asked of its boxui, which starts a daemon if none runs)
is forwarded to a socket in a private dir here, and the app's own `RemoteBackend`
follows it there exactly as it follows a local daemon: machines, `/v1/events`, health.
The connection's SSH keepalive (1 s, 2 missed) tells a silent host within 3 s; a host
that goes away (sshd killed, the network cut) ends the forwarded streams at once.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import asyncssh

from backend.errors import BoxuiError
from backend.hosts.remote_boxui import REMOTE_BOXUI, remote_endpoint
from backend.hosts.ssh_link import HostUnreachableError, SshLink
from backend.state.event_bus import Missed, Subscription
from backend.supervision.health import HealthSubscription
from boxui.tui.backend import BackendOptions
from boxui.tui.fleet.follower import Follower, ssh_argv
from boxui.tui.fleet.messages import HostChanged, HostEventArrived, HostHealthSampled
from boxui.tui.remote import RemoteBackend

#: a host's past shown as it is reached (the app shows as many of its own)
RECENT_EVENTS = 100


class BoxuiFollower(Follower):
    backend: RemoteBackend | None = None

    async def follow(self) -> None:
        link = SshLink(self.host)
        try:
            conn = await link.connection()
            endpoint = await remote_endpoint(link)
            latency = await link.latency()
            with tempfile.TemporaryDirectory(prefix="boxui-fleet-") as tmp:
                path = Path(tmp) / "api.sock"
                try:
                    listener = await conn.forward_local_path(str(path), endpoint.socket)
                except (OSError, asyncssh.Error) as exc:
                    raise HostUnreachableError(f"host {self.name}: cannot forward its API "
                                               f"socket: {exc}") from None
                try:
                    await self._follow_api(path, conn, latency)
                finally:
                    listener.close()
        finally:
            self.backend = None
            await link.close()

    async def _follow_api(self, path: Path, conn: asyncssh.SSHClientConnection,
                          latency: float | None) -> None:
        backend = RemoteBackend(BackendOptions(home=self.home), socket_path=path)
        events, health = backend.subscribe_events(), backend.subscribe_health()
        tasks = [asyncio.create_task(backend.run()), asyncio.create_task(conn.wait_closed()),
                 asyncio.create_task(self._pump_events(backend, events, latency)),
                 asyncio.create_task(self._pump_health(backend, health))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if conn.is_closed():
            raise HostUnreachableError(f"host {self.name} stopped answering (its SSH "
                                       "connection was lost)")
        for task in done:
            if (error := task.exception()) is not None:
                raise error
        raise HostUnreachableError(f"host {self.name}: its daemon closed the connection")

    async def _pump_events(self, backend: RemoteBackend, events: Subscription,
                           latency: float | None) -> None:
        await backend.ready.wait()
        self.backend, self.history = backend, backend.health_history
        self._relist(backend)
        self.reached(latency)
        self.past(backend.recent_events(RECENT_EVENTS))
        async for item in events:
            self.heard()
            if isinstance(item, Missed):
                self._relist(backend)
                self.post(HostChanged(self.name))
                continue
            if item.subject:
                try:
                    self.snapshot.machines[item.subject] = backend.machine(item.subject)
                except BoxuiError:
                    self.snapshot.machines.pop(item.subject, None)
            self.post(HostEventArrived(self.name, item, new=self.first_seen(item)))

    def _relist(self, backend: RemoteBackend) -> None:
        self.snapshot.machines = {m.name: m for m in backend.machines()}
        latest = (backend.health_history.latest(n) for n in self.snapshot.machines)
        self.snapshot.health = {s.machine: s for s in latest if s is not None}

    async def _pump_health(self, backend: RemoteBackend, health: HealthSubscription) -> None:
        await backend.ready.wait()
        while True:
            batch = [await health.get()]
            while (more := health.get_nowait()) is not None:
                batch.append(more)
            self.heard()
            for sample in batch:
                self.snapshot.health[sample.machine] = sample
            self.post(HostHealthSampled(self.name, [s.machine for s in batch]))

    async def act(self, verb: str, name: str) -> None:
        backend = self.backend
        if backend is None or not self.snapshot.reachable:
            raise HostUnreachableError(f"host {self.name} is unreachable: "
                                       f"{self.snapshot.reason}")
        if verb == "start":
            await backend.start(name)
        elif verb == "stop":
            await backend.stop(name)
        elif verb == "restart":
            await backend.restart(name)
        elif verb == "delete":
            await backend.delete(name)
        else:
            await super().act(verb, name)

    def session_argv(self, name: str | None) -> list[str]:
        """The host's own `boxui ssh NAME`, through a session on the host."""
        return ssh_argv(self.host, [REMOTE_BOXUI, "ssh", name] if name else [])
