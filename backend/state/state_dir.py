"""Where boxui keeps its machines, and the checks that make that place safe to trust.

The state dir holds SSH keys and the sockets that control VMs, so boxui refuses one that
another user could write to: a group- or world-writable dir, or one owned by someone else.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from backend.errors import StateDirError
from backend.state.names import validate_name

ENV_HOME = "BOXUI_HOME"


def default_home() -> Path:
    explicit = os.environ.get(ENV_HOME)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "boxui"


class StateDir:
    """The resolved layout of one state dir; building a path never touches the disk.

    Immutable and compared by its root, as a frozen dataclass would be, but written out:
    `boxui exec` builds one first thing, and `dataclasses` imports `inspect` and `ast`,
    which cost that command more than its whole request to the daemon.
    """

    __slots__ = ("root",)
    root: Path

    def __init__(self, root: Path) -> None:
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a StateDir is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, StateDir)
        return self.root == other.root

    def __hash__(self) -> int:
        return hash((self.root,))

    def __repr__(self) -> str:
        return f"StateDir(root={self.root!r})"

    def __reduce__(self) -> tuple[type[StateDir], tuple[Path]]:
        return StateDir, (self.root,)  # pickled and copied through __init__

    @property
    def machines(self) -> Path:
        return self.root / "machines"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def event_log(self) -> Path:
        return self.events / "log.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def services(self) -> Path:
        return self.root / "services"

    @property
    def api_socket(self) -> Path:
        """The control API's unix socket: in the 0700 run dir when the path fits a socket
        address (108 bytes), else in the same private /tmp dir that machine sockets use."""
        preferred = self.run / "api.sock"
        if len(str(preferred)) <= 100:
            return preferred
        return self._fallback_base() / "api.sock"

    @property
    def exec_socket(self) -> Path:
        """`boxui exec`'s framed socket (`backend.api.exec_socket`), beside the API's."""
        return self.api_socket.with_name("exec.sock")

    def _fallback_base(self) -> Path:
        # imported here: `boxui exec` resolves the socket path first thing, and these two
        # (tempfile brings shutil and random) are only for a state dir deep in the tree
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"boxui-{os.geteuid()}" / digest

    def ensure_api_socket_dir(self) -> Path:
        path = self.api_socket.parent
        if not path.is_relative_to(self.root):
            path.parent.mkdir(mode=0o700, exist_ok=True)
            check_private_dir(path.parent)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_dir(path)
        return path

    def machine_dir(self, name: str) -> Path:
        return self.machines / validate_name(name)

    def spec_path(self, name: str) -> Path:
        return self.machine_dir(name) / "machine.toml"

    def record_path(self, name: str) -> Path:
        return self.machine_dir(name) / "state.json"

    def console_log(self, name: str) -> Path:
        return self.machine_dir(name) / "console.log"

    def machine_run_dir(self, name: str) -> Path:
        """Where a machine's sockets live: 0700, and short enough for a unix socket path
        (108 bytes); a deep state dir falls back to a private dir under /tmp."""
        preferred = self.run / validate_name(name)
        if len(str(preferred / "qmp.sock")) <= 100:
            return preferred
        return self._fallback_base() / name

    def ensure_run_dir(self, name: str) -> Path:
        path = self.machine_run_dir(name)
        if not path.is_relative_to(self.root):
            base = path.parent.parent
            base.mkdir(mode=0o700, exist_ok=True)
            check_private_dir(base)
            path.parent.mkdir(mode=0o700, exist_ok=True)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_dir(path)
        return path


def check_private_dir(path: Path) -> None:
    """Refuse a directory another user could tamper with, saying exactly why."""
    try:
        info = path.stat()
    except OSError as exc:
        raise StateDirError(f"cannot use state dir {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"cannot use state dir {path}: not a directory")
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"refusing state dir {path}: owned by uid {info.st_uid}, "
            f"not by you (uid {os.geteuid()})"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(
            f"refusing state dir {path}: it is group- or world-writable "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with chmod 700 {path}"
        )


def open_state_dir(root: Path | None = None, *, create: bool = True) -> StateDir:
    """Resolve, create (0700) and vet the state dir and its fixed subdirs."""
    root = (root or default_home()).expanduser().absolute()
    if create:
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            root.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create state dir {root}: {exc.strerror}") from exc
    check_private_dir(root)
    state_dir = StateDir(root)
    if create:
        for sub in (state_dir.machines, state_dir.events, state_dir.run, state_dir.services):
            try:
                sub.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StateDirError(f"cannot create {sub}: {exc.strerror}") from exc
    return state_dir
