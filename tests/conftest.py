from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir, open_state_dir
from tests.api_helpers import Api, running_api
from tests.fake_driver import FakeDriver
from tests.fake_exec import GatedRunner

REPO = Path(__file__).resolve().parent.parent
BOXUI = [sys.executable, "-m", "boxui"]
#: built guest images, shared by every test that boots one (building takes minutes)
IMAGE_CACHE = Path(os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "home"
    monkeypatch.setenv("BOXUI_HOME", str(root))
    yield root
    stop_background_daemons(root)


def background_daemons(home: Path) -> list[psutil.Process]:
    """The daemons the CLI started for `home` (their argv names it)."""
    if not (home / "logs" / "daemon.log").exists():  # the spawner makes it first
        return []
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "--background" in cmdline and str(home) in cmdline:
            found.append(proc)
    return found


def stop_background_daemons(home: Path) -> None:
    """SIGTERM (then SIGKILL) what the CLI started for `home`, so no test leaves one."""
    procs = background_daemons(home)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture
def dirs(home: Path) -> StateDir:
    return open_state_dir(home)


@pytest.fixture
async def engine(home: Path) -> AsyncIterator[Engine]:
    eng = await Engine.open(home)
    try:
        yield eng
    finally:
        await eng.close()


def spec(name: str, **kw: object) -> MachineSpec:
    return MachineSpec.model_validate({"name": name, **kw})


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BOXUI_HOME"] = str(home)
    env.pop("BOXUI_DEBUG", None)
    return env


@pytest.fixture
def vm_home(tmp_path: Path) -> Iterator[Path]:
    """A state dir for real guests; every process that names it is killed afterwards."""
    # short path: QMP sockets must fit in 108 bytes; images shared across the session
    home = Path(f"/tmp/bx-{os.getpid()}-{tmp_path.name[-12:]}")
    home.mkdir(mode=0o700)
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "images").symlink_to(IMAGE_CACHE)
    yield home
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(home) in arg for arg in proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):  # it may have exited meanwhile
                proc.kill()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def driver() -> AsyncIterator[FakeDriver]:
    fake = FakeDriver()
    yield fake
    fake.kill_all()


@pytest.fixture
def runner() -> GatedRunner:
    return GatedRunner()


@pytest.fixture
async def api(engine: Engine, driver: FakeDriver, runner: GatedRunner) -> AsyncIterator[Api]:
    async with running_api(engine, driver, runner) as running:
        yield running
