"""The app's link to a running `boxui daemon`, through its control API.

When a daemon already supervises the state dir, the app cannot (and must not) run a
second engine: it connects to the daemon instead and offers the app the same surface as
`EmbeddedBackend`, so the screens look and behave the same. Machines come from
`/v1/machines`, live changes from the `/v1/events` stream (each event first refreshes the
machine it names, then reaches the app), health from `/v1/health/samples`; actions are
API calls. Files the daemon owns but that a user reads (console logs, `machine.toml`)
are read straight from the state dir, as the embedded link does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.errors import BoxuiError, MachineNotFoundError
from backend.services.scale_models import ServiceView
from backend.state.event_bus import EventBus, Subscription
from backend.state.events import CloudEvent
from backend.state.machine_spec import MachineSpec, read_spec
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir, open_state_dir
from backend.supervision.boot_files import ProgressFn
from backend.supervision.health import HealthHistory, HealthSample
from boxui.daemon.client import ApiCallError
from boxui.tui.embedded import LinkOptions

STREAM_PREFIX = "dev.boxui.stream.v1."


class HealthFeed:
    """Fan-out of the daemon's health samples to the app's subscribers (bounded: a slow
    subscriber loses the oldest samples, which a newer one makes obsolete anyway)."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[HealthSample]] = []

    def subscribe(self, maxsize: int) -> RemoteHealthSubscription:
        queue: asyncio.Queue[HealthSample] = asyncio.Queue(maxsize)
        self._queues.append(queue)
        return RemoteHealthSubscription(queue)

    def publish(self, sample: HealthSample) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(sample)


class RemoteHealthSubscription:
    def __init__(self, queue: asyncio.Queue[HealthSample]) -> None:
        self._queue = queue

    async def get(self) -> HealthSample:
        return await self._queue.get()

    def get_nowait(self) -> HealthSample | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None


class RemoteBackend:
    def __init__(self, options: LinkOptions | None = None, *, daemon_pid: int | None = None,
                 socket_path: Path | None = None) -> None:
        self.options = options or LinkOptions()
        self.dirs: StateDir = open_state_dir(self.options.home)
        self.socket_path = socket_path or self.dirs.api_socket
        self.daemon_pid = daemon_pid
        self.ready = asyncio.Event()
        self.health_history = HealthHistory()
        self._machines: dict[str, LoadedMachine] = {}
        self._recent: list[CloudEvent] = []
        self._bus = EventBus()
        self._health = HealthFeed()
        self._http: httpx.AsyncClient | None = None

    # --- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the daemon until cancelled (the app is closing); the daemon and its
        VMs are not affected by the app coming or going."""
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://boxui",
                                     timeout=httpx.Timeout(None, connect=5)) as http:
            self._http = http
            try:
                await self._follow()
            except* BoxuiError as group:
                raise group.exceptions[0] from None  # one line for the app's error handler
            finally:
                self._http = None

    async def _follow(self) -> None:
        async with asyncio.TaskGroup() as group:
            events_open = asyncio.Event()
            group.create_task(self._follow_events(events_open))
            await events_open.wait()  # subscribed first: from here on no change is missed
            await self._refresh_all()
            self._recent = [CloudEvent.model_validate(e) for e in await self._call(
                "GET", "/v1/events/recent", params={"limit": 100})]
            for view in await self._call("GET", "/v1/health/latest"):
                self.health_history.add(HealthSample(**view))
            group.create_task(self._follow_health())
            self.ready.set()

    async def _lines(self, path: str) -> AsyncIterator[dict[str, Any]]:
        assert self._http is not None
        async with self._http.stream("GET", path) as response:
            if response.status_code != 200:
                raise BoxuiError(f"the boxui daemon refused {path}: {response.status_code}")
            async for line in response.aiter_lines():
                if line.strip():
                    yield orjson.loads(line)
        raise BoxuiError(f"the boxui daemon (pid {self.daemon_pid}) closed {path}; "
                         "it has stopped, and its machines keep running")

    async def _follow_events(self, opened: asyncio.Event) -> None:
        async for data in self._lines("/v1/events"):
            event = CloudEvent.model_validate(data)
            if event.type.startswith(STREAM_PREFIX):
                if event.type.endswith(".subscribed"):
                    opened.set()
                elif event.type.endswith(".missed"):
                    # the daemon dropped events for us: re-read every machine (the app
                    # re-reads them too when its own subscription misses events)
                    await self._refresh_all()
                continue
            if event.subject:
                await self._refresh(event.subject)
            self._bus.publish(event)

    async def _follow_health(self) -> None:
        async for data in self._lines("/v1/health/samples"):
            sample = HealthSample(**data)
            self.health_history.add(sample)
            self._health.publish(sample)

    async def _refresh(self, name: str) -> None:
        try:
            view = await self._call("GET", f"/v1/machines/{name}")
        except ApiCallError as exc:
            if exc.code != MachineNotFoundError.code:
                raise
            self._machines.pop(name, None)
            self.health_history.forget(name)
            return
        self._machines[name] = LoadedMachine.model_validate(view)

    async def _refresh_all(self) -> None:
        fresh = [LoadedMachine.model_validate(v) for v in await self._call("GET", "/v1/machines")]
        self._machines = {m.name: m for m in fresh}

    async def _call(self, method: str, path: str, *, json: Any = None,
                    params: dict[str, Any] | None = None) -> Any:
        if self._http is None:
            raise BoxuiError("not connected to the boxui daemon")
        try:
            response = await self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise BoxuiError(f"the boxui daemon (pid {self.daemon_pid}) does not answer on "
                             f"{self.socket_path}: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = str(body["code"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                raise BoxuiError(f"the boxui daemon answered {response.status_code}: "
                                 f"{response.text[:200]}") from None
            raise ApiCallError(code, message)
        return response.json() if response.content else None

    # --- what the app reads ----------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.dirs.root

    @property
    def startup_notes(self) -> list[str]:
        return [f"connected to the boxui daemon (pid {self.daemon_pid}); it supervises "
                "the machines, and they keep running when the app closes"]

    def machines(self) -> list[LoadedMachine]:
        return list(self._machines.values())

    def machine(self, name: str) -> LoadedMachine:
        try:
            return self._machines[name]
        except KeyError:
            raise MachineNotFoundError(name) from None

    def subscribe_events(self, maxsize: int = 4096) -> Subscription:
        return self._bus.subscribe(maxsize=maxsize)

    def subscribe_health(self, maxsize: int = 4096) -> RemoteHealthSubscription:
        return self._health.subscribe(maxsize)

    def accel(self) -> AccelChoice:
        if self.options.accel_for is not None:
            return self.options.accel_for("auto")
        return resolve_accel("auto")

    def spec_path(self, name: str) -> Path:
        return self.dirs.spec_path(name)

    def machines_dir(self) -> Path:
        return self.dirs.machines

    def load_spec(self, name: str) -> MachineSpec:
        return read_spec(self.dirs.spec_path(name))

    def console_log(self, name: str) -> Path:
        return self.dirs.console_log(name)

    def recent_events(self, limit: int) -> list[object]:
        return list(self._recent[-limit:])

    # --- what the app changes --------------------------------------------------------

    async def create(self, spec: MachineSpec, *, start: bool = True,
                     progress: ProgressFn | None = None) -> None:
        await self._call("POST", "/v1/machines", params={"start": start},
                         json=spec.model_dump(mode="json", exclude_none=True))

    async def start(self, name: str, *, progress: ProgressFn | None = None) -> None:
        await self._call("POST", f"/v1/machines/{name}/start")

    async def stop(self, name: str) -> None:
        await self._call("POST", f"/v1/machines/{name}/stop")

    async def restart(self, name: str, *, progress: ProgressFn | None = None) -> None:
        await self._call("POST", f"/v1/machines/{name}/restart")

    async def delete(self, name: str) -> None:
        await self._call("DELETE", f"/v1/machines/{name}", params={"force": True})

    async def services(self) -> list[ServiceView]:
        return [ServiceView.model_validate(v) for v in await self._call("GET", "/v1/services")]


def find_daemon_link(options: LinkOptions | None = None) -> RemoteBackend | None:
    """A link to the daemon serving this state dir, or None when none does."""
    from backend.state.supervisor_lock import lock_holder

    options = options or LinkOptions()
    dirs = open_state_dir(options.home)
    holder = lock_holder(dirs.lock_file)
    if holder is None or not dirs.api_socket.exists():
        return None
    return RemoteBackend(options, daemon_pid=holder)
