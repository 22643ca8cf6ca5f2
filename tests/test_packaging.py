"""boxui installs like any Python tool (`pipx install .`): the wheel carries every module,
the app's CSS and the built-in themes, and building it needs nothing from the checkout
but the packages, pyproject.toml and the README."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("backend", "boxui")


def _sources(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for package in PACKAGES
            for p in (root / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """A wheel built from a copy holding only what a build may use."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No matching distribution found for setuptools" in done.stderr:
        pytest.skip("the build backend (setuptools) cannot be fetched here")
    assert done.returncode == 0, done.stderr
    [built] = out.glob("boxui-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_wheel_has_every_module_and_data_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert sorted(_sources(REPO) - names) == []
    assert "boxui/tui/app.tcss" in names
    themes = {f"boxui/tui/theme_files/{p.name}"
              for p in (REPO / "boxui/tui/theme_files").glob("*.toml")}
    assert themes and themes <= names
    assert {"backend/__init__.py", "boxui/cli/__init__.py"} <= names


def test_wheel_declares_the_boxui_command(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    lines = wheel.read(entry_points).decode().splitlines()
    assert "boxui = boxui.cli.main:main" in [line.strip() for line in lines]
