"""What the app needs from boxui's engine: one interface, two ways to provide it.

The app and its screens ask an `AppBackend` for everything (machines, events, health,
files a user reads, actions) and never reach into `backend` modules for behaviour, so the
same screens work whoever supervises the machines. `EmbeddedBackend` runs the engine and
supervisor inside the app's own event loop; `RemoteBackend` follows a running
`boxui daemon` through its control API, because a state dir has one supervisor at a
time. Tests inject the embedded one over the fake driver, the demo over its stand-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from backend.drivers.base import HypervisorDriver
from backend.drivers.qemu.accel import AccelChoice
from backend.images.catalog import ImageListing
from backend.images.progress import ImageProgress
from backend.services.scale_models import ServiceView
from backend.state.accelerator import AccelRequest
from backend.state.event_bus import Subscription
from backend.state.events import CloudEvent
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from backend.state.port_forward_view import ForwardView
from backend.state.port_mapping import PortMapping
from backend.state.port_mapping import Protocol as PortProtocol
from backend.supervision.boot_files import BootFilesProvider, ProgressFn
from backend.supervision.file_copy import Progress as CopyProgress
from backend.supervision.health import HealthHistory, HealthSubscription
from backend.supervision.machine_disk import DiskUsage
from backend.supervision.machine_exec import ExecOutput


@dataclass(frozen=True)
class BackendOptions:
    """How to build a backend. `home` and `accel_for` apply to both; the rest only to
    the embedded one, which owns the driver and the supervisor."""

    home: Path | None = None
    driver_factory: Callable[[], HypervisorDriver] | None = None
    boot_files_factory: Callable[[Path], BootFilesProvider] | None = None
    accel_for: Callable[[AccelRequest], AccelChoice] | None = None
    sample_health: bool = True
    health_interval: float = 1.0
    #: serve the control API while the app runs, so the CLI (and scripts) act through it
    serve_api: bool = True
    #: the supervisor's monotonic clock (boot durations in events); fixed in snapshots
    clock: Callable[[], float] | None = None
    #: on closing with machines running, keep the lock for `EmbeddedBackend.hand_over`
    #: (which the caller must then call: `boxui` does); else simply let go of it
    hand_over_on_close: bool = False
    #: what runs the daemon the app hands its running machines to
    #: (`boxui daemon`; tests give one over the stand-in driver)
    daemon_command: list[str] | None = None


def image_progress_text(event: ImageProgress) -> str:
    """`downloading 12/80: curl`, as the row and the detail pane show a build's step."""
    count = f" {event.done}/{event.total}" if event.total else ""
    return f"{event.step}{count}: {event.package or event.message}"


class AppBackend(Protocol):
    """Everything the app and its screens use, and nothing more.

    Reading methods answer from memory or the state dir without waiting, because the UI
    calls them while drawing; only actions and `services` are awaited. Nothing but
    `home` may be used before `ready` is set.
    """

    @property
    def ready(self) -> asyncio.Event:
        """Set once machines, recent events and health can be read."""

    @property
    def home(self) -> Path:
        """The state dir (absolute), known before `run` starts: themes live there."""

    @property
    def startup_notes(self) -> list[str]: ...

    @property
    def health_history(self) -> HealthHistory: ...

    async def run(self) -> None:
        """Provide the backend until cancelled (the app is closing); machines keep
        running either way."""

    # --- reading ---------------------------------------------------------------------

    def machines(self) -> list[LoadedMachine]: ...

    def machine(self, name: str) -> LoadedMachine: ...

    def recent_events(self, limit: int) -> list[CloudEvent]: ...

    def subscribe_events(self, maxsize: int = 4096) -> Subscription: ...

    async def event_history(self, limit: int) -> list[CloudEvent]:
        """The log's last `limit` events, oldest first: the past a timeline draws
        (awaited: it may read the whole log, or ask the daemon)."""

    def subscribe_health(self, maxsize: int = 4096) -> HealthSubscription: ...

    def accel(self) -> AccelChoice: ...

    def machines_dir(self) -> Path: ...

    def spec_path(self, name: str) -> Path: ...

    def load_spec(self, name: str) -> MachineSpec: ...

    def console_log(self, name: str) -> Path: ...

    async def services(self) -> list[ServiceView]: ...

    async def images(self) -> list[ImageListing]:
        """`default`, every built image and every recipe not built yet."""

    def disk_usage(self, name: str) -> DiskUsage | None:
        """The machine's own disk (None: it has none); read from the state dir."""

    # --- changing --------------------------------------------------------------------

    async def create(self, spec: MachineSpec, *, start: bool = True,
                     progress: ProgressFn | None = None, mounts: Sequence[str] = (),
                     ports: Sequence[str] = ()) -> None:
        """`mounts` and `ports` as the CLI's `--mount` and `--port` take them."""

    async def build_image(self, name: str, progress: ProgressFn | None = None) -> None:
        """Build OS image `name` from its recipe (a cache hit when built already)."""

    async def start(self, name: str, *, progress: ProgressFn | None = None) -> None: ...

    async def stop(self, name: str) -> None: ...

    async def restart(self, name: str, *, progress: ProgressFn | None = None) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def add_port(self, name: str, mapping: PortMapping) -> ForwardView:
        """Forward now (no restart) and at every start, as `boxui port add`."""

    async def remove_port(self, name: str, guest: int, protocol: PortProtocol) -> ForwardView:
        ...

    async def exec(self, name: str, argv: list[str], *,
                   timeout: float | None = None) -> ExecOutput:
        """Run `argv` in the running machine (recorded in the command registry)."""

    async def copy(self, name: str, source: str, target: str, *, recursive: bool,
                   progress: CopyProgress | None = None) -> None:
        """`boxui cp SOURCE TARGET` for machine `name` (`NAME:PATH` on one side)."""
