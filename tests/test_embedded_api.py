"""The app's embedded backend serves the same API, so the CLI works while the app runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from backend.state.lifecycle import InstanceState
from boxui.tui.backend import BackendOptions
from boxui.tui.embedded import EmbeddedBackend
from tests.conftest import BOXUI, cli_env
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *BOXUI, *args, env=cli_env(home), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_goes_through_the_apps_backend(home: Path) -> None:
    driver = FakeDriver()
    backend = EmbeddedBackend(BackendOptions(
        home=home, driver_factory=lambda: driver,
        boot_files_factory=lambda _images: FakeBootFiles(), accel_for=fixed_accel,
        sample_health=False))
    task = asyncio.create_task(backend.run())
    try:
        await backend.ready.wait()
        sock = backend.engine.dirs.api_socket
        async with asyncio.timeout(10):
            while not sock.exists():
                await asyncio.sleep(0.02)
        code, out, err = await cli(home, "create", "vm", "--json")
        assert code == 0, err
        assert json.loads(out)["state"] == "ready"
        assert backend.engine.projection.state_of("vm") is InstanceState.READY
        assert driver.starts == {"vm": 1}  # booted by the app's supervisor, not the CLI
        code, out, err = await cli(home, "rm", "--force", "vm")
        assert (code, out.strip()) == (0, "deleted vm"), err
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        driver.kill_all()
    assert not sock.exists()
