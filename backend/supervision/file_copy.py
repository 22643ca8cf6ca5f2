"""Files in and out of a guest over SFTP: what `boxui cp` does once it has a machine.

Why SFTP and not scp or a pipe through `exec`: SFTP has file types, modes, times and
per-file errors in the protocol, so "no such file", "is a directory" and "permission
denied" arrive as themselves instead of as text from a remote shell, and asyncssh keeps
many requests in flight, which a pipe through one channel cannot.

The checks before a copy (source missing, a directory without -r, a destination that is
not a directory) are made here and not left to the transfer, so each fails in one line
naming the path the user typed, before a byte is written. The copy itself follows scp:
a destination that is a directory receives the source under its own name; directories
are merged; symlinks are followed; modes (and times) are kept.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from backend.errors import BoxuiError
from backend.guest.machine_seed import MachineKeys
from backend.state.names import NAME_PATTERN
from backend.supervision.ssh_access import connect

if TYPE_CHECKING:
    import asyncssh  # deferred at run time: only `boxui cp` pays for it

#: (file being copied, bytes done, bytes in the file)
Progress = Callable[[str, int, int], None]
Kind = Literal["file", "dir"] | None
NO_SFTP_HINT = ("the default guest (busybox and dropbear) has none; copy files with a "
                "machine made from a Debian image (--image debian-12)")


class CopyError(BoxuiError):
    code = "copy"


class EndpointError(CopyError):
    """The command line's SRC or DST cannot be what the user meant (a usage error)."""

    code = "invalid_argument"


@dataclass(frozen=True)
class Local:
    """A path on this host, kept as typed: a trailing `/` means "a directory"."""

    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class Remote:
    machine: str
    path: str

    def __str__(self) -> str:
        return f"{self.machine}:{self.path}"


Endpoint = Local | Remote


def parse_endpoint(text: str) -> Endpoint:
    """`NAME:PATH` is a machine's path, anything else a local one, as scp reads them: a
    colon before any slash makes it remote (so `./a:b` is the local file `a:b`)."""
    if "\0" in text:
        raise EndpointError(f"{text!r}: a path cannot contain a NUL byte")
    head, colon, path = text.partition(":")
    if not colon or "/" in head:
        if not text:
            raise EndpointError("an empty path names no file")
        return Local(text)
    if not NAME_PATTERN.fullmatch(head):
        raise EndpointError(f"{head!r} before ':' is not a machine name (a-z, 0-9, '-'); "
                            "for a local file with a colon in its name write ./" + text)
    return Remote(head, path or ".")


def plan(src: Endpoint, dst: Endpoint) -> tuple[Local, Remote] | tuple[Remote, Local]:
    """The two sides in order, refusing a copy with no machine or two machines."""
    if isinstance(src, Local) and isinstance(dst, Remote):
        return src, dst
    if isinstance(src, Remote) and isinstance(dst, Local):
        return src, dst
    if isinstance(src, Remote):
        raise EndpointError("both SRC and DST are on machines; one side must be local")
    raise EndpointError("both SRC and DST are local; write NAME:PATH for the machine's side")


# --- checks before the copy -------------------------------------------------------------


def local_kind(path: str) -> Kind:
    try:
        mode = os.stat(path.rstrip("/") or "/").st_mode  # `check` judges a trailing /
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise CopyError(f"{path}: a part of the path is not a directory") from exc
    except OSError as exc:
        raise CopyError(f"{path}: {exc.strerror or exc}") from exc
    return "dir" if stat.S_ISDIR(mode) else "file"


async def _remote_kind(sftp: asyncssh.SFTPClient, remote: Remote, path: str) -> Kind:
    import asyncssh

    try:
        attrs = await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return None
    except asyncssh.SFTPError as exc:
        raise CopyError(f"{remote.machine}:{path}: {_reason(exc)}") from exc
    return "dir" if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY else "file"


def check(src_kind: Kind, src_label: str, dst_kind: Kind, dst_label: str,
          dst_path: str, parent_kind: Callable[[], Kind], recursive: bool) -> None:
    """Refuse what scp would refuse, naming the path; `parent_kind` is asked only when
    the destination does not exist (its parent must be a directory to create it in)."""
    if src_kind is None:
        raise CopyError(f"{src_label}: no such file or directory")
    if src_kind == "dir" and not recursive:
        raise CopyError(f"{src_label} is a directory (use cp -r)")
    if dst_kind == "dir":
        return
    if dst_path.endswith("/") or (dst_kind == "file" and src_kind == "dir"):
        raise CopyError(f"{dst_label}: " + ("not a directory" if dst_kind
                                             else "no such directory"))
    if dst_kind is None and parent_kind() != "dir":
        raise CopyError(f"{dst_label}: no such directory to create it in")


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "."


# --- the copy ---------------------------------------------------------------------------


async def copy_files(port: int, keys: MachineKeys, machine_dir: Path,
                     src: Endpoint, dst: Endpoint, *, recursive: bool,
                     progress: Progress | None = None, default_guest: bool = False) -> None:
    """Copy SRC to DST, one of them on the machine behind `port`, over one connection."""
    import asyncssh

    source, target = plan(src, dst)
    remote = source if isinstance(source, Remote) else target
    assert isinstance(remote, Remote)
    conn = await connect(port, keys, machine_dir)
    async with conn:
        try:
            sftp = await conn.start_sftp_client()
        except (OSError, EOFError, asyncssh.Error) as exc:
            raise _no_sftp(remote.machine, exc, default_guest) from exc
        async with sftp:
            if isinstance(source, Local):
                assert isinstance(target, Remote)
                await _upload(sftp, source, target, recursive, progress)
            else:
                assert isinstance(target, Local)
                await _download(sftp, source, target, recursive, progress)


def _no_sftp(machine: str, exc: BaseException, default_guest: bool) -> CopyError:
    """The default guest's dropbear runs a `sftp-server` that is not there, so the session
    just ends: say why rather than how (asyncio's "0 bytes read" tells nobody anything)."""
    if default_guest:
        return CopyError(f"{machine} has no SFTP server: {NO_SFTP_HINT}")
    cause = ("the session closed at once" if isinstance(exc, EOFError) else _reason(exc))
    return CopyError(f"{machine} has no SFTP server ({cause}); is openssh-sftp-server "
                     "installed in it?")


async def _upload(sftp: asyncssh.SFTPClient, local: Local, remote: Remote,
                  recursive: bool, progress: Progress | None) -> None:
    src_kind = local_kind(local.path)
    dst_kind = await _remote_kind(sftp, remote, remote.path)
    parent = None if dst_kind else await _remote_kind(sftp, remote, _parent(remote.path))
    check(src_kind, str(local), dst_kind, str(remote), remote.path, lambda: parent, recursive)
    failure = _Failure(local_label=str, remote_label=lambda p: f"{remote.machine}:{p}",
                       local_is_source=True)
    await _transfer(sftp.put, local.path, remote.path, recursive, progress, failure, remote)


async def _download(sftp: asyncssh.SFTPClient, remote: Remote, local: Local,
                    recursive: bool, progress: Progress | None) -> None:
    src_kind = await _remote_kind(sftp, remote, remote.path)
    text = local.path
    dst_kind = local_kind(text)
    check(src_kind, str(remote), dst_kind, text, text,
          lambda: local_kind(_parent(text)), recursive)
    failure = _Failure(local_label=str, remote_label=lambda p: f"{remote.machine}:{p}",
                       local_is_source=False)
    await _transfer(sftp.get, remote.path, text, recursive, progress, failure, remote)


@dataclass
class _Failure:
    """The error handler, so a line names the file an error is about: asyncssh calls it
    where the file failed, then, left to itself, re-tags the error with each enclosing
    directory on the way out. A `CopyError`, which asyncssh does not catch, stops the
    copy right there with the file's own path."""

    local_label: Callable[[str], str]
    remote_label: Callable[[str], str]
    local_is_source: bool

    def __call__(self, exc: Exception) -> NoReturn:
        import asyncssh

        src = _decode(getattr(exc, "srcpath", b""))
        dst = _decode(getattr(exc, "dstpath", b""))
        if isinstance(exc, asyncssh.SFTPError):  # the machine's side failed
            path = self.remote_label(dst if self.local_is_source else src)
        else:  # an OSError: ours
            path = self.local_label(src if self.local_is_source else dst)
        raise CopyError(f"{path}: {_reason(exc)}") from exc


async def _transfer(method: Callable[..., Awaitable[None]], src: str, dst: str, recursive: bool,
                    progress: Progress | None, failure: _Failure, remote: Remote) -> None:
    import asyncssh

    def report(srcpath: bytes, _dstpath: bytes, done: int, total: int) -> None:
        if progress is not None:
            progress(_decode(srcpath), done, total)

    try:
        await method(src, dst, preserve=True, recurse=recursive, follow_symlinks=True,
                     progress_handler=report, error_handler=failure)
    except (OSError, asyncssh.Error) as exc:  # outside any one file: the connection
        raise CopyError(f"copy to or from {remote.machine} failed: {_reason(exc)}") from exc


def _decode(path: object) -> str:
    if isinstance(path, bytes):
        return path.decode("utf-8", "backslashreplace")
    return str(path)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(reason or type(exc).__name__).rstrip(".")
