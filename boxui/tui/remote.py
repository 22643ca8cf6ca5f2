"""The app's backend when a `boxui daemon` already supervises the state dir.

The app cannot (and must not) run a second engine then: it follows the daemon through
its control API instead, so the screens look and behave the same. Machines come from
`/v1/machines`, live changes from the `/v1/events` stream (each event first refreshes the
machine it names, then reaches the app), health from `/v1/health/samples` into the same
history and subscriptions the daemon's sampler offers; actions are API calls. Files the
daemon owns but that a user reads (console logs, `machine.toml`) are read straight from
the state dir, as the embedded backend does.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import orjson
from pydantic import TypeAdapter

from backend.api.image_models import ImageBuildLine
from backend.api.models import ExecResponse
from backend.drivers.qemu.accel import AccelChoice, resolve_accel
from backend.errors import BoxuiError, MachineNotFoundError
from backend.images.catalog import ImageListing
from backend.images.progress import ImageProgress
from backend.services.scale_models import ServiceView
from backend.state.event_bus import EventBus, Subscription
from backend.state.events import CloudEvent
from backend.state.machine_spec import MachineSpec, read_spec
from backend.state.machine_store import LoadedMachine
from backend.state.port_forward_view import ForwardView
from backend.state.port_mapping import PortMapping, Protocol
from backend.state.state_dir import StateDir, open_state_dir
from backend.supervision.boot_files import ProgressFn
from backend.supervision.file_copy import Progress as CopyProgress
from backend.supervision.health import (
    HealthFeed,
    HealthHistory,
    HealthSample,
    HealthSubscription,
)
from backend.supervision.machine_disk import DiskUsage, disk_usage
from backend.supervision.machine_exec import ExecOutput
from boxui.daemon.client import (
    BASE_URL,
    TIMEOUT,
    ApiCallError,
    QueryParams,
    read_answer,
    serving_daemon,
    unreachable,
)
from boxui.tui.backend import BackendOptions, image_progress_text
from boxui.tui.copying import copy_over_ssh
from boxui.tui.forwards import apply_forwards

STREAM_PREFIX = "dev.boxui.stream.v1."

_MACHINES = TypeAdapter(list[LoadedMachine])
_EVENTS = TypeAdapter(list[CloudEvent])
_SAMPLE = TypeAdapter(HealthSample)
_SAMPLES = TypeAdapter(list[HealthSample])
_SERVICES = TypeAdapter(list[ServiceView])
_IMAGES = TypeAdapter(list[ImageListing])


class RemoteBackend:
    def __init__(self, options: BackendOptions | None = None, *,
                 daemon_pid: int | None = None, socket_path: Path | None = None) -> None:
        self.options = options or BackendOptions()
        self.dirs: StateDir = open_state_dir(self.options.home)
        self.socket_path = socket_path or self.dirs.api_socket
        self.daemon_pid = daemon_pid
        self.ready = asyncio.Event()
        self._health = HealthFeed()
        self._machines: dict[str, LoadedMachine] = {}
        self._recent: list[CloudEvent] = []
        self._bus = EventBus()
        self._http: httpx.AsyncClient | None = None

    # --- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the daemon until cancelled (the app is closing); the daemon and its
        VMs are not affected by the app coming or going."""
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL,
                                     timeout=TIMEOUT) as http:
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
            self._recent = _EVENTS.validate_python(await self._call(
                "GET", "/v1/events/recent", params={"limit": 100}))
            latest = await self._call("GET", "/v1/health/latest")
            for sample in _SAMPLES.validate_python(latest):
                self.health_history.add(sample)
            group.create_task(self._follow_health())
            self.ready.set()

    async def _lines(self, path: str) -> AsyncIterator[object]:
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
            self._health.publish(_SAMPLE.validate_python(data))

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
        fresh = _MACHINES.validate_python(await self._call("GET", "/v1/machines"))
        self._machines = {m.name: m for m in fresh}

    async def _call(self, method: str, path: str, *, json: object = None,
                    params: QueryParams | None = None) -> object:
        if self._http is None:
            raise BoxuiError("not connected to the boxui daemon")
        try:
            response = await self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise unreachable(self.daemon_pid, self.socket_path, exc) from None
        return read_answer(response)

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

    def subscribe_health(self, maxsize: int = 4096) -> HealthSubscription:
        return self._health.subscribe(maxsize=maxsize)

    @property
    def health_history(self) -> HealthHistory:
        return self._health.history

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

    def recent_events(self, limit: int) -> list[CloudEvent]:
        return list(self._recent[-limit:])

    async def event_history(self, limit: int) -> list[CloudEvent]:
        return _EVENTS.validate_python(await self._call(
            "GET", "/v1/events/recent", params={"limit": limit}))

    # --- what the app changes --------------------------------------------------------

    async def images(self) -> list[ImageListing]:
        return _IMAGES.validate_python(await self._call("GET", "/v1/images"))

    def disk_usage(self, name: str) -> DiskUsage | None:
        return disk_usage(self.dirs.machine_dir(name))

    async def build_image(self, name: str, progress: ProgressFn | None = None) -> None:
        """The daemon builds it; its NDJSON progress lines become `progress` calls."""
        if self._http is None:
            raise BoxuiError("not connected to the boxui daemon")
        async with self._http.stream("POST", "/v1/images/builds", json={"name": name},
                                     timeout=None) as response:
            if response.status_code >= 400:
                await response.aread()
                read_answer(response)  # raises the daemon's one-line error
            async for raw in response.aiter_lines():
                if not raw.strip():
                    continue
                line = ImageBuildLine.model_validate_json(raw)
                if line.type == "result":
                    return
                if line.type == "error":
                    raise ApiCallError(line.code or "error", line.message or "build failed")
                if progress is not None and line.step is not None:
                    progress(line.step, image_progress_text(ImageProgress(
                        step=line.step, message=line.message or "", done=line.done,
                        total=line.total, package=line.package)))
        raise BoxuiError(f"the boxui daemon ended the build of {name} without a result")

    async def create(self, spec: MachineSpec, *, start: bool = True,
                     progress: ProgressFn | None = None, mounts: Sequence[str] = (),
                     ports: Sequence[str] = ()) -> None:
        spec = apply_forwards(spec, list(mounts), list(ports))
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
        return _SERVICES.validate_python(await self._call("GET", "/v1/services"))

    async def add_port(self, name: str, mapping: PortMapping) -> ForwardView:
        answer = await self._call("POST", f"/v1/machines/{name}/ports",
                                  json=mapping.model_dump(mode="json"))
        await self._refresh(name)  # the dialog lists the forwards from `machine` next
        return ForwardView.model_validate(answer)

    async def remove_port(self, name: str, guest: int, protocol: Protocol) -> ForwardView:
        answer = await self._call("DELETE", f"/v1/machines/{name}/ports/{guest}",
                                  params={"protocol": protocol})
        await self._refresh(name)
        return ForwardView.model_validate(answer)

    async def exec(self, name: str, argv: list[str], *,
                   timeout: float | None = None) -> ExecOutput:
        answer = ExecResponse.model_validate(await self._call(
            "POST", f"/v1/machines/{name}/exec", json={"argv": argv, "timeout": timeout}))
        return ExecOutput(answer.exit_code, base64.b64decode(answer.stdout_b64),
                          base64.b64decode(answer.stderr_b64))

    async def copy(self, name: str, source: str, target: str, *, recursive: bool,
                   progress: CopyProgress | None = None) -> None:
        """Over SSH from here, as `boxui cp` does, not through the daemon."""
        await copy_over_ssh(self.dirs.root, name, source, target, recursive=recursive,
                            progress=progress)


def find_daemon_backend(options: BackendOptions | None = None) -> RemoteBackend | None:
    """A backend over the daemon serving this state dir, or None when none does."""
    options = options or BackendOptions()
    pid = serving_daemon(open_state_dir(options.home))
    return None if pid is None else RemoteBackend(options, daemon_pid=pid)
