from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backend.errors import StateDirError
from backend.state.state_dir import default_home, open_state_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_private(tmp_path: Path) -> None:
    dirs = open_state_dir(tmp_path / "a" / "home")
    assert mode(dirs.root) == 0o700
    for sub in (dirs.machines, dirs.events, dirs.run):
        assert mode(sub) == 0o700


def test_boxui_home_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOXUI_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"


def test_xdg_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BOXUI_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "boxui"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_home() == tmp_path / "user" / ".local" / "share" / "boxui"


@pytest.mark.parametrize("bad_mode", [0o770, 0o702, 0o777])
def test_writable_by_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    root = tmp_path / "home"
    root.mkdir()
    root.chmod(bad_mode)
    with pytest.raises(StateDirError, match="group- or world-writable"):
        open_state_dir(root)
    assert not (root / "machines").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(StateDirError, match="owned by uid 65534"):
        open_state_dir(root)
