"""With a `boxui daemon` (here: an embedded backend serving the same API) holding the state
dir, the app connects to it through the API and behaves as it does embedded: machines
listed, actions carried out by the daemon's supervisor, changes and health shown live."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from boxui.tui.app import BoxuiApp
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from boxui.tui.remote import RemoteBackend, find_daemon_backend
from tests.app.conftest import FIXED_TIME, seed
from tests.app.pilot_helpers import SIZE, cell, rows, started, until
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel


async def test_app_drives_a_running_daemon(home: Path) -> None:
    await seed(home, "web", "db")
    driver = FakeDriver()
    daemon = EmbeddedBackend(BackendOptions(
        home=home, driver_factory=lambda: driver,
        boot_files_factory=lambda _images: FakeBootFiles(), accel_for=fixed_accel,
        sample_health=True, health_interval=0.2))
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.ready.wait()
        async with asyncio.timeout(10):
            while not daemon.engine.dirs.api_socket.exists():
                await asyncio.sleep(0.02)
        remote = find_daemon_backend(BackendOptions(home=home, accel_for=fixed_accel))
        assert isinstance(remote, RemoteBackend)
        app = BoxuiApp(remote, clock=lambda: FIXED_TIME)
        app.suspend = contextlib.nullcontext  # type: ignore[assignment,method-assign]
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot, app)
            assert rows(app) == ["db", "web"]
            assert any("connected to the boxui daemon" in n.message
                       for n in app._notifications)
            await pilot.press("down", "s")  # web
            await until(pilot, lambda: cell(app, "web", "state") == "ready")
            assert driver.starts == {"web": 1}, "the daemon's supervisor boots it"
            await until(pilot, lambda: cell(app, "web", "cpu") != "-")  # health via the API
            # a change made elsewhere (the CLI, through the daemon) shows up live
            await daemon.stop("web")
            await until(pilot, lambda: cell(app, "web", "state") == "stopped")
            await daemon.delete("db")
            await until(pilot, lambda: rows(app) == ["web"])
        assert daemon.engine.projection.state_of("web") is not None, "the daemon lives on"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        driver.kill_all()


async def test_images_disk_and_forwards_over_the_daemon(home: Path) -> None:
    from backend.errors import BoxuiError
    from backend.state.machine_spec import MachineSpec

    driver = FakeDriver()
    daemon = EmbeddedBackend(BackendOptions(
        home=home, driver_factory=lambda: driver,
        boot_files_factory=lambda _images: FakeBootFiles(), accel_for=fixed_accel,
        sample_health=False))
    task = asyncio.create_task(daemon.run())
    try:
        await daemon.ready.wait()
        async with asyncio.timeout(10):
            while not daemon.engine.dirs.api_socket.exists():
                await asyncio.sleep(0.02)
        remote = find_daemon_backend(BackendOptions(home=home, accel_for=fixed_accel))
        assert isinstance(remote, RemoteBackend)
        follow = asyncio.create_task(remote.run())
        try:
            async with asyncio.timeout(10):
                await remote.ready.wait()
                names = {i.name: i.built for i in await remote.images()}
                assert names["debian-12"] is False and "default" in names
                try:
                    await remote.build_image("no-such-recipe")
                except BoxuiError as exc:
                    assert "no-such-recipe" in str(exc)
                else:
                    raise AssertionError("an unknown recipe must be refused")
                await remote.create(MachineSpec(name="web"), start=False, ports=["8080:80"])
                spec = daemon.engine.store.load_spec("web")
                assert [str(p) for p in spec.ports] == ["8080:80"]
                assert remote.disk_usage("web") is None  # the default guest has no disk
                # the port-forward dialog's calls (`f`), answered from the daemon's spec
                from backend.state.port_forward_view import forward_views
                from backend.state.port_mapping import PortMapping
                await remote.add_port("web", PortMapping.parse("9090:90"))
                assert [(v.host, v.guest) for v in forward_views(remote.machine("web"))] \
                    == [(8080, 80), (9090, 90)]
                await remote.remove_port("web", 80, "tcp")
                assert [str(p) for p in daemon.engine.store.load_spec("web").ports] \
                    == ["9090:90"]
                assert [v.guest for v in forward_views(remote.machine("web"))] == [90]
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        driver.kill_all()
