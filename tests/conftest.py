from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir, open_state_dir

REPO = Path(__file__).resolve().parent.parent
BOXUI = [sys.executable, "-m", "boxui"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "home"
    monkeypatch.setenv("BOXUI_HOME", str(root))
    return root


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
