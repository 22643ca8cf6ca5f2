from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.errors import StorageError
from backend.state import atomic_write
from backend.state.atomic_write import (
    TEMP_MARKER,
    atomic_write_bytes,
    fsync_tree,
    remove_leftover_temps,
)

OLD = b"old contents\n" * 100
NEW = b"new contents!\n" * 300


def temps(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(TEMP_MARKER)]


def test_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write_bytes(target, OLD)
    atomic_write_bytes(target, NEW, mode=0o600)
    assert target.read_bytes() == NEW
    assert target.stat().st_mode & 0o777 == 0o600
    assert temps(tmp_path) == []


STEPS = ["open", "write", "fsync", "close", "replace", "fsync_dir"]


@pytest.mark.parametrize("step", STEPS)
def test_exception_at_each_step_leaves_old_or_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "f"
    atomic_write_bytes(target, OLD)
    real = {name: getattr(os, name) for name in ("open", "write", "fsync", "close", "replace")}
    calls = {"fsync": 0, "open": 0}

    def failing(name: str):  # type: ignore[no-untyped-def]
        def fn(*args, **kwargs):  # type: ignore[no-untyped-def]
            if name == "fsync":
                calls["fsync"] += 1
                if (step == "fsync" and calls["fsync"] == 1) or (
                    step == "fsync_dir" and calls["fsync"] == 2
                ):
                    raise OSError(errno.EIO, "injected")
            elif name == "open":
                calls["open"] += 1
                if step == "open" and calls["open"] == 1:
                    raise OSError(errno.EIO, "injected")
            elif name == step:
                raise OSError(errno.EIO, "injected")
            return real[name](*args, **kwargs)

        return fn

    for name in real:
        monkeypatch.setattr(os, name, failing(name))
    with pytest.raises(StorageError) as info:
        atomic_write_bytes(target, NEW)
    monkeypatch.undo()
    assert "\n" not in str(info.value)
    content = target.read_bytes()
    assert content in (OLD, NEW)
    if step != "fsync_dir":
        assert content == OLD
    assert temps(tmp_path) == []


CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from backend.state.atomic_write import atomic_write_bytes
    step, target = sys.argv[1], Path(sys.argv[2])
    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace
    count = {"fsync": 0}
    def write(fd, data):
        if step == "mid-write":
            real_write(fd, bytes(data)[: len(data) // 2])
            os._exit(9)
        return real_write(fd, data)
    def fsync(fd):
        count["fsync"] += 1
        if step == "before-fsync" or (step == "before-dir-fsync" and count["fsync"] == 2):
            os._exit(9)
        return real_fsync(fd)
    def replace(a, b):
        if step == "before-rename":
            os._exit(9)
        real_replace(a, b)
        if step == "after-rename":
            os._exit(9)
    os.write, os.fsync, os.replace = write, fsync, replace
    atomic_write_bytes(target, b"new contents!\\n" * 300)
    """
)


@pytest.mark.parametrize(
    "step", ["mid-write", "before-fsync", "before-rename", "after-rename", "before-dir-fsync"]
)
def test_process_killed_at_each_step(tmp_path: Path, step: str) -> None:
    target = tmp_path / "f"
    atomic_write_bytes(target, OLD)
    proc = subprocess.run([sys.executable, "-c", CHILD, step, str(target)], check=False)
    assert proc.returncode == 9
    content = target.read_bytes()
    assert content in (OLD, NEW), "a crash must never leave a partial file"
    if step in ("mid-write", "before-fsync", "before-rename"):
        assert content == OLD
    else:
        assert content == NEW
    remove_leftover_temps(tmp_path)
    assert temps(tmp_path) == []
    assert target.read_bytes() == content


def test_disk_full_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    atomic_write_bytes(target, OLD)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="no space left on device; the previous file"):
        atomic_write_bytes(target, NEW)
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert temps(tmp_path) == []
    atomic_write_bytes(target, NEW)
    assert target.read_bytes() == NEW


def test_interrupted_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    atomic_write_bytes(target, OLD)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, NEW)
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert temps(tmp_path) == []


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "pub", b"key", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "pub").stat().st_mode & 0o777 == 0o644


def test_fsync_tree_syncs_every_file_before_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "staging"
    (root / "a" / "b").mkdir(parents=True)
    for file in (root / "top", root / "a" / "mid", root / "a" / "b" / "deep"):
        file.write_bytes(b"x")
    synced: list[Path] = []
    monkeypatch.setattr(atomic_write, "fsync_file", synced.append)
    monkeypatch.setattr(atomic_write, "fsync_dir", synced.append)
    fsync_tree(root)
    expected = {root, root / "a", root / "a" / "b", root / "top", root / "a" / "mid",
                root / "a" / "b" / "deep"}
    assert set(synced) == expected and len(synced) == len(expected)
    for file in expected - {root, root / "a", root / "a" / "b"}:
        assert synced.index(file) < synced.index(file.parent)
