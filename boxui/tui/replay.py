"""`boxui demo --replay FILE`: a recording played back into the real app.

`ReplayBackend` implements the app's backend interface from the recorded events alone:
the same projection the engine uses turns them into machines, service events into
services, and the events themselves feed the events pane, the timeline and (written to
the replay's own throwaway event log) the cells view. It answers every action with one
clear line: a replay shows what happened; it changes nothing and runs no machine.
Events keep their recorded times, and the app's clock follows the recording's, so ages,
uptimes and the timeline read as they did live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from backend.drivers.qemu.accel import AccelChoice
from backend.errors import BoxuiError, IllegalTransitionError, MachineNotFoundError
from backend.images.catalog import ImageListing
from backend.services.scale_models import InstanceInfo, ServiceView
from backend.services.service_spec import MAX_REPLICAS, ServiceSpec
from backend.state.event_bus import EventBus, Subscription
from backend.state.event_log import EventLog
from backend.state.events import CloudEvent, verb_of
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from backend.state.port_forward_view import ForwardView
from backend.state.port_mapping import PortMapping
from backend.state.port_mapping import Protocol as PortProtocol
from backend.state.projection import Projection
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import StateDir, open_state_dir
from backend.supervision.boot_files import ProgressFn
from backend.supervision.file_copy import Progress as CopyProgress
from backend.supervision.health import HealthFeed, HealthHistory, HealthSubscription
from backend.supervision.machine_disk import DiskUsage
from backend.supervision.machine_exec import ExecOutput
from boxui.tui.recording import RecordedEvent, Recording

SERVICE_PREFIX = "dev.boxui.service.v1."
REFUSAL = "this is a replay of a recording: it shows what happened and changes nothing"


class ReplayBackend:
    def __init__(self, recording: Recording, home: Path, *, speed: float = 1.0,
                 source: str = "") -> None:
        if speed <= 0:
            raise BoxuiError(f"--speed must be more than 0, not {speed:g}")
        self.recording = recording
        self.speed = speed
        self.source = source
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()
        self.played = 0
        self._home = home.expanduser().absolute()
        self._dirs: StateDir | None = None
        self._log: EventLog | None = None
        self._projection = Projection()
        self._specs: dict[str, MachineSpec] = {}
        self._started_at: dict[str, datetime] = {}
        self._services: dict[str, int] = {}
        self._members: dict[str, str] = {}
        self._events: list[CloudEvent] = []
        self._bus = EventBus()
        self._health = HealthFeed()
        self._origin: float | None = None  # loop time when the recording's 0 was played

    # --- playing ---------------------------------------------------------------------

    async def run(self) -> None:
        """Apply the recorded history at once, then the rest in its own rhythm (divided
        by `speed`); stay open on the last state once it has all played."""
        self._dirs = await asyncio.to_thread(open_state_dir, self._home)
        self._log = await asyncio.to_thread(EventLog.open, self._dirs.event_log)
        lines = self.recording.lines
        past = [line for line in lines if line.at <= 0]
        for line in past:
            self._apply(line)
        loop = asyncio.get_running_loop()
        self._origin = loop.time()
        self.ready.set()
        for line in lines[len(past):]:
            delay = line.at / self.speed - (loop.time() - self._origin)
            if delay > 0:
                await asyncio.sleep(delay)
            self._apply(line)
        self.finished.set()
        await asyncio.Event().wait()

    def _apply(self, line: RecordedEvent) -> None:
        event = line.event
        name = event.subject or ""
        if line.spec is not None:
            self._specs[name] = line.spec
        verb = verb_of(event.type)
        if verb is not None:
            with contextlib.suppress(IllegalTransitionError):  # as a log replay does
                self._projection.apply(event)
            if verb is Verb.BOOTING:
                self._started_at[name] = event.time
            service = event.data.get("service")
            if isinstance(service, str):
                self._members[name] = service
        elif event.type.startswith(SERVICE_PREFIX):
            self._apply_service(event)
        self._events.append(event)
        if self._log is not None:
            self._log.append(event, durable=False)  # a throwaway copy: no fsync
        self.played += 1
        self._bus.publish(event)

    def _apply_service(self, event: CloudEvent) -> None:
        name = event.subject or ""
        kind = event.type[len(SERVICE_PREFIX):]
        if kind == "removed":
            self._services.pop(name, None)
        elif kind == "created":
            self._services[name] = _count(event.data.get("replicas"))
        elif kind == "scaled":
            self._services[name] = _count(event.data.get("to"))

    def now(self) -> float:
        """The recording's clock: its start plus the time played (times the speed),
        standing still at the recording's end once it has all played."""
        start = self.recording.header.started.timestamp()
        if self._origin is None:
            return start
        played = (asyncio.get_running_loop().time() - self._origin) * self.speed
        return start + min(played, self.recording.duration)  # it ends where it ended

    def wall_clock(self) -> float:
        """`now` for callers outside the loop (the app's clock)."""
        try:
            return self.now()
        except RuntimeError:
            return time.time()

    # --- what the app reads ----------------------------------------------------------

    @property
    def home(self) -> Path:
        return self._home

    @property
    def startup_notes(self) -> list[str]:
        return []

    @property
    def health_history(self) -> HealthHistory:
        return self._health.history

    def machines(self) -> list[LoadedMachine]:
        return [self.machine(name) for name in self._projection.names()]

    def machine(self, name: str) -> LoadedMachine:
        seen = self._projection.get(name)
        if seen is None:
            raise MachineNotFoundError(name)
        running = seen.state in ACTIVE_STATES
        record = RuntimeRecord(state=seen.state, reason=seen.reason,
                               ever_started=seen.ever_started,
                               started_at=self._started_at.get(name) if running else None,
                               accel="demo" if running else None)
        return LoadedMachine(name=name, spec=self._specs.get(name), record=record,
                             state=seen.state, reason=seen.reason)

    def recent_events(self, limit: int) -> list[CloudEvent]:
        return self._events[-limit:]

    async def event_history(self, limit: int) -> list[CloudEvent]:
        return self._events[-limit:]

    def subscribe_events(self, maxsize: int = 4096) -> Subscription:
        return self._bus.subscribe(maxsize=maxsize)

    def subscribe_health(self, maxsize: int = 4096) -> HealthSubscription:
        return self._health.subscribe(maxsize=maxsize)

    def accel(self) -> AccelChoice:
        return AccelChoice(accel="demo", reason=f"a replay of {self.source or 'a recording'}"
                           ": no machine runs")

    def _state_dir(self) -> StateDir:
        if self._dirs is None:
            raise BoxuiError("the replay has not started")
        return self._dirs

    def machines_dir(self) -> Path:
        return self._state_dir().machines

    def spec_path(self, name: str) -> Path:
        return self._state_dir().spec_path(name)

    def load_spec(self, name: str) -> MachineSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise MachineNotFoundError(name) from None

    def console_log(self, name: str) -> Path:
        return self._state_dir().console_log(name)

    async def services(self) -> list[ServiceView]:
        return [self._service_view(name, replicas) for name, replicas in
                sorted(self._services.items())]

    def _service_view(self, name: str, replicas: int) -> ServiceView:
        spec = ServiceSpec(name=name, replicas=replicas,
                           max_replicas=max(replicas, 1, min(4, MAX_REPLICAS)))
        instances = []
        for machine in self.machines():
            if self._members.get(machine.name) != name:
                continue
            first = next(e.time for e in self._events if e.subject == machine.name)
            instances.append(InstanceInfo(id=machine.name, state=machine.state,
                                          service=name, created_at=first))
        ready = sum(i.state in (InstanceState.READY, InstanceState.BUSY) for i in instances)
        return ServiceView(spec=spec, current_replicas=ready, instances=instances)

    async def images(self) -> list[ImageListing]:
        return []

    def disk_usage(self, name: str) -> DiskUsage | None:
        return None

    # --- what the app would change: nothing ------------------------------------------

    async def create(self, spec: MachineSpec, *, start: bool = True,
                     progress: ProgressFn | None = None, mounts: Sequence[str] = (),
                     ports: Sequence[str] = ()) -> None:
        raise BoxuiError(REFUSAL)

    async def build_image(self, name: str, progress: ProgressFn | None = None) -> None:
        raise BoxuiError(REFUSAL)

    async def start(self, name: str, *, progress: ProgressFn | None = None) -> None:
        raise BoxuiError(REFUSAL)

    async def stop(self, name: str) -> None:
        raise BoxuiError(REFUSAL)

    async def restart(self, name: str, *, progress: ProgressFn | None = None) -> None:
        raise BoxuiError(REFUSAL)

    async def delete(self, name: str) -> None:
        raise BoxuiError(REFUSAL)

    async def add_port(self, name: str, mapping: PortMapping) -> ForwardView:
        raise BoxuiError(REFUSAL)

    async def remove_port(self, name: str, guest: int, protocol: PortProtocol) -> ForwardView:
        raise BoxuiError(REFUSAL)

    async def exec(self, name: str, argv: list[str], *,
                   timeout: float | None = None) -> ExecOutput:
        raise BoxuiError(REFUSAL)

    async def copy(self, name: str, source: str, target: str, *, recursive: bool,
                   progress: CopyProgress | None = None) -> None:
        raise BoxuiError(REFUSAL)


def _count(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value <= MAX_REPLICAS else 0


def replay_title(backend: ReplayBackend) -> str:
    length = timedelta(seconds=round(backend.recording.duration))
    speed = f" x{backend.speed:g}" if backend.speed != 1 else ""
    what = backend.recording.header.title or backend.source
    return f"REPLAY{speed} · {what} · {length} long"
