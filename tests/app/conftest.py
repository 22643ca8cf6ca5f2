from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from tests.app.pilot_helpers import SIZE, started
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel

FIXED_TIME = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()

#: builds the app over an embedded backend; keyword arguments go to `BoxuiApp`, except
#: `boot_files` and `sample_health`, which configure the backend
MakeApp = Callable[..., BoxuiApp]


@pytest.fixture
async def fake_driver() -> AsyncIterator[FakeDriver]:
    driver = FakeDriver()
    yield driver
    driver.kill_all()


@pytest.fixture
def make_app(home: Path, fake_driver: FakeDriver) -> MakeApp:
    def build(**kwargs: Any) -> BoxuiApp:
        boot_files = kwargs.pop("boot_files", None) or FakeBootFiles()
        options = BackendOptions(
            home=home, driver_factory=lambda: fake_driver,
            boot_files_factory=lambda _images: boot_files, accel_for=fixed_accel,
            sample_health=kwargs.pop("sample_health", False), health_interval=0.2,
        )
        app = BoxuiApp(EmbeddedBackend(options), clock=lambda: FIXED_TIME, **kwargs)
        # headless test drivers cannot hand over a terminal; the rest of the path is real
        app.suspend = contextlib.nullcontext  # type: ignore[assignment,method-assign]
        return app

    return build


async def seed(home: Path, *names: str, **spec: Any) -> None:
    engine = await Engine.open(home)
    try:
        for name in names:
            await engine.create_machine(MachineSpec(name=name, **spec))
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def app_over(home: Path, make_app: MakeApp, *machines: str,
                   ui_toml: str | None = None) -> AsyncIterator[tuple[BoxuiApp, Pilot[None]]]:
    """The app, started, over `machines` (made first) and with `ui_toml` as the user's
    ui.toml: how most pilot tests begin."""
    await seed(home, *machines)
    if ui_toml is not None:
        (home / "ui.toml").write_text(ui_toml)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        yield app, pilot


def embedded(app: BoxuiApp) -> EmbeddedBackend:
    """The app's backend as the engine-owning kind these tests build, to reach inside."""
    assert isinstance(app.backend, EmbeddedBackend)
    return app.backend
