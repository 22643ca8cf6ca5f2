"""Crash-safe file replacement, and the fsyncs that make a rename durable.

A reader (or a boxui restarted after a crash or power loss) must only ever see the old
file or the new one. So every write goes: temp file in the same directory, write, fsync,
rename over the target, fsync the directory so the rename itself is durable. Whatever
else publishes files by rename (a whole directory renamed into place, a downloaded file
moved into a cache) uses the fsyncs here: the data first, the directory after the rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from backend.errors import StorageError

TEMP_MARKER = ".boxui-tmp-"


def fsync_dir(directory: Path) -> None:
    """Make the names in `directory` durable (a rename, a new or removed entry)."""
    _fsync_opened(directory, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    """Make an already written file's contents durable before it is renamed into place."""
    _fsync_opened(path, os.O_RDONLY)


def fsync_tree(root: Path) -> None:
    """Every file's contents, then every directory's names, under `root` (itself
    included): what a directory needs before it is renamed into place whole."""
    for current, _dirs, files in os.walk(root):
        for name in files:
            fsync_file(Path(current) / name)
        fsync_dir(Path(current))


def _fsync_opened(path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600, *,
                       durable: bool = True, sync_dir: bool = True) -> None:
    """Replace `path` with `data`, which gets exactly `mode` whatever the umask (a key's
    mode is part of its meaning); on any failure the old file stays and no temp is left.
    `durable=False` skips the fsyncs, for derived data that a power cut may cost but
    never corrupt unnoticed (a reader must then tolerate an old or empty file).
    `sync_dir=False` keeps the data's fsync but not the directory's: after a power cut
    the file is the old one or the new one, never empty, but the new one may be lost."""
    directory = path.parent
    # not `secrets.token_hex`: the same bytes, without its imports on the `ls` path
    tmp = directory / f"{TEMP_MARKER}{path.name}.{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise StorageError(_describe(path, exc)) from exc
    except BaseException:  # interrupted (Ctrl-C, a cancelled thread's caller): no temp left
        _discard(tmp)
        raise
    if not (durable and sync_dir):
        return
    try:
        fsync_dir(directory)
    except OSError as exc:
        raise StorageError(_describe(path, exc)) from exc


def _discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def atomic_write_text(path: Path, text: str, mode: int = 0o600, *,
                      sync_dir: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode, sync_dir=sync_dir)


def remove_leftover_temps(directory: Path) -> list[Path]:
    """Delete temp files a crash left behind; they are never the only copy of anything."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(TEMP_MARKER) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def os_error_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def _describe(path: Path, exc: OSError) -> str:
    return f"could not write {path}: {os_error_reason(exc)}; the previous file is unchanged"
