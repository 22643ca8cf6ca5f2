"""`boxui cp`: files in and out of a machine over SFTP, run through the real CLI entry
point against an SSH server on loopback that holds the machine's own host key and serves
a directory as the guest's `/` (asyncssh's SFTP server: the host has no sshd to start).

The machine is recorded as ready by an engine that holds the state dir's lock, as a
supervisor would; the engine and the server live on a loop in a thread of their own,
because the CLI runs its own event loop in this thread."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from backend.guest.machine_seed import create_machine_keys
from backend.state.engine import Engine
from backend.state.lifecycle import Verb
from backend.supervision.file_copy import (
    EndpointError,
    Local,
    Remote,
    check,
    parse_endpoint,
    plan,
)
from boxui.cli.copy import ProgressLine
from boxui.cli.main import main
from tests.conftest import spec
from tests.test_ssh_access import dropbear_host_key

T = TypeVar("T")
TIMEOUT = 15


class ReadOnlyAt(asyncssh.SFTPServer):
    """The guest's SFTP server; `/ro` refuses writes as a read-only mount would (the tests
    run as root here, so file modes cannot make a permission error)."""

    def _refuse(self, path: bytes) -> None:
        if self.map_path(path).startswith(self.map_path(b"/ro")):
            raise asyncssh.SFTPPermissionDenied("Permission denied")

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        if pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_CREAT):
            self._refuse(path)
        return super().open(path, pflags, attrs)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._refuse(path)
        super().mkdir(path, attrs)


class Guest:
    """A loop in a thread: the engine that says `vm` is ready, and its SSH server."""

    def __init__(self, home: Path, guest_root: Path) -> None:
        self.home, self.root = home, guest_root
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine: Engine | None = None
        self.server: asyncssh.SSHAcceptor | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    async def start(self, name: str = "vm", sftp: bool = True, **kw: object) -> None:
        if self.engine is None:
            self.engine = await Engine.open(self.home)
        await self.engine.create_machine(spec(name, **kw))
        keys = create_machine_keys(self.engine.dirs.machine_dir(name))
        root = os.fsencode(self.root)
        self.server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[dropbear_host_key(keys)],
            authorized_client_keys=asyncssh.import_authorized_keys(
                keys.client_public.read_text()),
            sftp_factory=(lambda chan: ReadOnlyAt(chan, chroot=root)) if sftp else None,
            allow_scp=False, config=None)
        port = self.server.get_port()
        await self.engine.transition(name, Verb.BOOTING)
        await self.engine.transition(name, Verb.READY,
                                     update=lambda r: setattr(r, "ssh_port", port))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 5)
        if self.engine is not None:
            await self.engine.close()

    def close(self) -> None:
        self.call(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@contextlib.contextmanager
def running_guest(home: Path, tmp_path: Path) -> Iterator[Guest]:
    """Machine `vm` of state dir `home`, its `/` being tmp_path/guest (`/ro` read-only)."""
    root = tmp_path / "guest"
    (root / "ro").mkdir(parents=True)
    running = Guest(home, root)
    running.call(running.start())
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def guest(home: Path, tmp_path: Path) -> Iterator[Guest]:
    with running_guest(home, tmp_path) as running:
        yield running


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "local"
    where.mkdir()
    monkeypatch.chdir(where)
    return where


def cp(argv: list[str], monkeypatch: pytest.MonkeyPatch,
       capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of `boxui cp ARGV` through the real entry point."""
    monkeypatch.setattr(sys, "argv", ["boxui", "cp", *argv])
    code: object = 0
    try:
        main()
    except SystemExit as exited:
        code = exited.code
    out = capsys.readouterr()
    assert out.out == ""
    return (code if isinstance(code, int) else 1), out.err


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` with its permission bits and, for a file, its bytes."""
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        data = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(root))] = (path.stat().st_mode & 0o7777, data)
    return found


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o751)
    (root / "sub" / "secret").write_bytes(os.urandom(300_000))
    (root / "sub" / "secret").chmod(0o600)
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    (root / "sub").chmod(0o750)


# --- files --------------------------------------------------------------------------------


def test_a_file_goes_in_and_out_with_its_mode(guest: Guest, local: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # several SFTP requests in flight
    (local / "tool").write_bytes(data)
    (local / "tool").chmod(0o754)
    assert cp(["tool", "vm:/tool"], monkeypatch, capsys) == (0, "")
    copied = guest.root / "tool"
    assert copied.read_bytes() == data and copied.stat().st_mode & 0o7777 == 0o754
    # into an existing directory: under its own name
    (guest.root / "opt").mkdir()
    assert cp(["tool", "vm:/opt"], monkeypatch, capsys) == (0, "")
    assert (guest.root / "opt" / "tool").read_bytes() == data
    # and out again, to a new name and into a directory (`.`)
    copied.chmod(0o640)
    assert cp(["vm:/tool", "back"], monkeypatch, capsys) == (0, "")
    assert (local / "back").read_bytes() == data
    assert (local / "back").stat().st_mode & 0o7777 == 0o640
    (local / "in").mkdir()
    assert cp(["vm:/opt/tool", "in/"], monkeypatch, capsys) == (0, "")
    assert (local / "in" / "tool").read_bytes() == data


def test_a_relative_remote_path_is_in_the_home_dir(guest: Guest, local: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`vm:` alone is the guest's home dir, as with scp; `./a:b` is a local file."""
    (local / "a:b").write_text("colon\n")
    assert cp(["./a:b", "vm:"], monkeypatch, capsys) == (0, "")
    assert (guest.root / "a:b").read_text() == "colon\n"  # the server's home is its root


# --- directories ----------------------------------------------------------------------------


def test_a_directory_goes_in_and_out_whole(guest: Guest, local: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    make_tree(local / "proj")
    assert cp(["-r", "proj", "vm:/src"], monkeypatch, capsys) == (0, "")  # a new name
    assert tree(guest.root / "src") == tree(local / "proj")
    assert cp(["-r", "proj", "vm:/src"], monkeypatch, capsys) == (0, "")  # now a dir: inside
    assert tree(guest.root / "src" / "proj") == tree(local / "proj")
    assert cp(["--recursive", "vm:/src/proj", "."], monkeypatch, capsys) == (0, "")  # merged
    (local / "out").mkdir()
    assert cp(["-r", "vm:/src", "out"], monkeypatch, capsys) == (0, "")
    assert tree(local / "out" / "src") == tree(guest.root / "src")


# --- errors: one line, exit 1, nothing written ------------------------------------------


@pytest.mark.parametrize(("argv", "says"), [
    (["missing", "vm:/x"], "boxui: missing: no such file or directory"),
    (["vm:/missing", "x"], "boxui: vm:/missing: no such file or directory"),
    (["dir", "vm:/x"], "boxui: dir is a directory (use cp -r)"),
    (["vm:/gdir", "x"], "boxui: vm:/gdir is a directory (use cp -r)"),
    (["file", "vm:/gfile/"], "boxui: vm:/gfile/: not a directory"),
    (["-r", "dir", "vm:/gfile"], "boxui: vm:/gfile: not a directory"),
    (["file", "vm:/nowhere/x"], "boxui: vm:/nowhere/x: no such directory to create it in"),
    (["file", "vm:/nowhere/"], "boxui: vm:/nowhere/: no such directory"),
    (["vm:/gfile", "file/"], "boxui: file/: not a directory"),
    (["vm:/gfile", "nowhere/x"], "boxui: nowhere/x: no such directory to create it in"),
    (["file", "vm:/ro/file"], "boxui: vm:/ro/file: Permission denied"),
    (["-r", "dir", "vm:/ro"], "boxui: vm:/ro/dir: Permission denied"),
    (["vm:/gfile", "/sys/boxui-cp-test"], "boxui: /sys/boxui-cp-test: Permission denied"),
    (["file", "nope:/x"], "boxui: no machine named 'nope'"),
])
def test_errors_are_one_line(guest: Guest, local: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], argv: list[str],
                             says: str) -> None:
    (local / "file").write_text("f\n")
    (local / "dir").mkdir()
    (local / "dir" / "inner").write_text("i\n")
    (guest.root / "gfile").write_text("g\n")
    (guest.root / "gdir").mkdir()
    before = tree(local), tree(guest.root)
    code, err = cp(argv, monkeypatch, capsys)
    assert (code, err.strip().splitlines()) == (1, [says])
    assert (tree(local), tree(guest.root)) == before


def test_a_stopped_machine_is_named(guest: Guest, local: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert guest.engine is not None
    guest.call(guest.engine.transition("vm", Verb.STOPPING))
    guest.call(guest.engine.transition("vm", Verb.STOPPED))
    (local / "f").write_text("f\n")
    code, err = cp(["f", "vm:/f"], monkeypatch, capsys)
    assert code == 1 and err == "boxui: vm is stopped, not running; start it with: boxui start vm\n"


def test_a_guest_without_sftp_says_why(guest: Guest, local: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The default guest's dropbear has no sftp-server to run: the error says to use a
    Debian image, not merely that a channel closed."""
    guest.call(guest.start("bare", sftp=False))
    (local / "f").write_text("f\n")
    code, err = cp(["f", "bare:/f"], monkeypatch, capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("boxui: bare has no SFTP server: ")
    assert "the default guest (busybox and dropbear) has none" in err
    assert "--image debian-12" in err
    # an image machine should have one: the line says what is missing, not to use an image
    guest.call(guest.start("img", sftp=False, image="debian-12"))
    code, err = cp(["f", "img:/f"], monkeypatch, capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("boxui: img has no SFTP server (") and "openssh-sftp-server" in err


@pytest.mark.parametrize(("argv", "says"), [
    (["a", "b"], "both SRC and DST are local"),
    (["x:a", "y:b"], "both SRC and DST are on machines"),
    (["UPPER:a", "b"], "'UPPER' before ':' is not a machine name"),
    (["a"], "Missing argument 'DST'"),
])
def test_bad_arguments_are_usage_errors(home: Path, local: Path, argv: list[str], says: str,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cp(argv, monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not home.exists()  # refused before the state dir was even opened


# --- the parts --------------------------------------------------------------------------


def test_endpoints_read_like_scp() -> None:
    assert parse_endpoint("vm:/etc/x") == Remote("vm", "/etc/x")
    assert parse_endpoint("vm:") == Remote("vm", ".")
    assert parse_endpoint("dir/a:b") == Local("dir/a:b")
    assert parse_endpoint("/abs") == Local("/abs")
    for bad in ("", "a\0b", "a b:x", "-x:y"):
        with pytest.raises(EndpointError):
            parse_endpoint(bad)
    with pytest.raises(EndpointError):
        plan(Local("a"), Local("b"))
    assert plan(Remote("vm", "a"), Local("b")) == (Remote("vm", "a"), Local("b"))


def test_check_asks_for_the_parent_only_when_it_must() -> None:
    asked: list[str] = []

    def parent() -> None:
        asked.append("parent")

    check("file", "s", "dir", "d", "d", parent, recursive=False)
    check("dir", "s", "dir", "d", "d", parent, recursive=True)
    assert asked == []


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_for_large_files_on_a_terminal_only() -> None:
    tty = Tty()
    line = ProgressLine(tty, min_bytes=1000)
    line("small", 10, 999)
    assert tty.getvalue() == ""
    line("big", 0, 4000)
    line("big", 4000, 4000)
    shown = tty.getvalue()
    assert shown.startswith("\rbig   0% ") and "\rbig 100% 3.9 KiB/3.9 KiB " in shown
    assert shown.endswith("\n") and shown.count("\n") == 1
    piped = io.StringIO()
    ProgressLine(piped, min_bytes=0)("big", 4000, 4000)
    assert piped.getvalue() == ""
