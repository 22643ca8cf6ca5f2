"""One directory per machine on disk, and the only code that reads or writes it.

Loading never lets one bad machine hide the others: a machine whose files cannot be read
or are invalid loads as `broken` with the reason, and boxui never overwrites or deletes
the bad file (the user may want to fix it by hand).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from backend.errors import (
    InvalidNameError,
    MachineExistsError,
    MachineNotFoundError,
    SpecError,
    StorageError,
)
from backend.state.atomic_write import fsync_dir, os_error_reason, remove_leftover_temps
from backend.state.events import now_utc
from backend.state.lifecycle import InstanceState, PersistedState
from backend.state.machine_spec import MachineSpec, read_spec, write_spec
from backend.state.names import is_valid_name, validate_name
from backend.state.process_liveness import unsupervised_state
from backend.state.runtime_record import RuntimeRecord, read_record, write_record
from backend.state.state_dir import StateDir

_TRASH_PREFIX = ".deleting-"
_STAGING_PREFIX = ".creating-"


class LoadedMachine(BaseModel):
    """A machine as loaded from disk, with its state as far as the disk can tell."""

    name: str
    spec: MachineSpec | None = None
    record: RuntimeRecord | None = None
    state: InstanceState
    reason: str | None = None
    #: recorded as running while no supervisor runs: not vouched for until one starts
    #: and re-adopts it (or marks it crashed)
    needs_recovery: bool = False

    @property
    def broken(self) -> bool:
        return self.state is InstanceState.BROKEN


def machine_view(m: LoadedMachine) -> dict[str, Any]:
    """The JSON shape of a machine for `ls --json`, `info --json` and the listing cache."""
    return {
        "name": m.name,
        "state": m.state.value,
        "reason": m.reason,
        "needs_recovery": m.needs_recovery,
        "spec": m.spec.model_dump(mode="json") if m.spec else None,
        "record": m.record.model_dump(mode="json") if m.record else None,
    }


class MachineStore:
    def __init__(self, state_dir: StateDir) -> None:
        self.dirs = state_dir

    # --- names -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every machine directory, valid name or not (an invalid one loads as broken)."""
        try:
            entries = os.scandir(self.dirs.machines)
        except FileNotFoundError:
            return []
        with entries:
            return sorted(
                e.name for e in entries if e.is_dir() and not e.name.startswith(".")
            )

    def exists(self, name: str) -> bool:
        return self.dirs.machine_dir(name).is_dir()

    # --- create / delete -------------------------------------------------------------

    def create(self, spec: MachineSpec) -> RuntimeRecord:
        """Create the machine's dir, spec and record; refuse if the name is taken.

        The files are written in a hidden staging dir that is renamed into place, so a
        crash half way leaves no half-made machine (which would load as broken), only a
        staging dir that the next start removes.
        """
        directory = self.dirs.machine_dir(spec.name)
        if directory.exists():
            raise MachineExistsError(spec.name)
        staging = self.dirs.machines / f"{_STAGING_PREFIX}{spec.name}-{secrets.token_hex(4)}"
        try:
            staging.mkdir(mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create {directory}: {exc.strerror}") from exc
        record = RuntimeRecord()
        try:
            try:
                write_spec(staging / "machine.toml", spec)
                write_record(staging / "state.json", record)
            except StorageError as exc:
                why = (os_error_reason(exc.__cause__) if isinstance(exc.__cause__, OSError)
                       else str(exc))
                raise StorageError(f"cannot create machine {spec.name!r} in "
                                   f"{self.dirs.machines}: {why}; nothing was created") from exc
            try:
                os.rename(staging, directory)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise MachineExistsError(spec.name) from None
                raise StorageError(f"cannot create {directory}: {exc.strerror}") from exc
            fsync_dir(self.dirs.machines)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return record

    def delete(self, name: str) -> None:
        """Remove a machine's directory; the rename first makes the removal all-or-nothing
        as far as any later load can see."""
        self.empty_trash(self.move_to_trash(name))

    def move_to_trash(self, name: str) -> Path:
        """Take a machine's directory out of sight with one rename, the step that makes
        a delete happen on disk. The next start removes a trash dir a crash left and
        reports which machine's delete it finished (`trashed_name`)."""
        directory = self.dirs.machine_dir(name)
        if not directory.is_dir():
            raise MachineNotFoundError(name)
        trash = self.dirs.machines / f"{_TRASH_PREFIX}{name}-{secrets.token_hex(4)}"
        try:
            os.rename(directory, trash)
            fsync_dir(self.dirs.machines)
        except OSError as exc:
            raise StorageError(f"cannot delete {directory}: {exc.strerror}") from exc
        return trash

    def restore_from_trash(self, name: str, trash: Path) -> None:
        """Undo `move_to_trash` when the delete could not be logged, so disk and log
        keep telling the same story."""
        os.rename(trash, self.dirs.machine_dir(name))
        fsync_dir(self.dirs.machines)

    @staticmethod
    def empty_trash(trash: Path) -> None:
        shutil.rmtree(trash, ignore_errors=True)

    # --- spec and record -------------------------------------------------------------

    def load_spec(self, name: str) -> MachineSpec:
        directory = self.dirs.machine_dir(name)
        if not directory.is_dir():
            raise MachineNotFoundError(name)
        return _read_named_spec(directory / "machine.toml", name)

    def save_spec(self, spec: MachineSpec) -> None:
        if not self.exists(spec.name):
            raise MachineNotFoundError(spec.name)
        write_spec(self.dirs.spec_path(spec.name), spec)

    def load_record(self, name: str) -> RuntimeRecord:
        if not self.exists(name):
            raise MachineNotFoundError(name)
        return read_record(self.dirs.record_path(name))

    def update_record(
        self, name: str, mutate: Callable[[RuntimeRecord], None], *, sync_dir: bool = True
    ) -> RuntimeRecord:
        """Load, mutate and write `state.json` in one step under the machine's lock, so
        concurrent writers serialise instead of losing each other's changes."""
        with self._machine_lock(name):
            path = self.dirs.record_path(name)
            record = read_record(path)
            mutate(record)
            record.updated_at = now_utc()
            record = RuntimeRecord.model_validate(record.model_dump())
            write_record(path, record, sync_dir=sync_dir)
            return record

    def replace_record(self, name: str, record: RuntimeRecord) -> None:
        with self._machine_lock(name):
            write_record(self.dirs.record_path(name), record)

    @contextlib.contextmanager
    def _machine_lock(self, name: str) -> Iterator[None]:
        directory = self.dirs.machine_dir(name)
        try:
            fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            raise MachineNotFoundError(name) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- loading ---------------------------------------------------------------------

    def load(self, name: str, *, supervised: bool = False) -> LoadedMachine:
        """Load one machine. `supervised` says a live supervisor keeps `state.json`
        current; without one, a machine recorded as running is not trusted to be."""
        try:
            validate_name(name)
        except InvalidNameError as exc:
            if (self.dirs.machines / name).is_dir():
                return LoadedMachine(name=name, state=InstanceState.BROKEN, reason=str(exc))
            raise
        directory = self.dirs.machine_dir(name)
        if not directory.is_dir():
            raise MachineNotFoundError(name)
        return self._load_existing(name, directory, supervised)

    def _load_existing(self, name: str, directory: Path, supervised: bool) -> LoadedMachine:
        spec: MachineSpec | None = None
        record: RuntimeRecord | None = None
        problems: list[str] = []
        try:
            spec = _read_named_spec(directory / "machine.toml", name)
        except SpecError as exc:
            problems.append(str(exc))
        try:
            record = read_record(directory / "state.json")
        except SpecError as exc:
            problems.append(str(exc))
        if problems:
            return LoadedMachine(
                name=name, spec=spec, record=record,
                state=InstanceState.BROKEN, reason="; ".join(problems),
            )
        assert record is not None
        if record.persisted is PersistedState.RUNNING and not supervised:
            state, reason = unsupervised_state(
                record.state.value, record.pid, record.process_start_time)
            return LoadedMachine(
                name=name, spec=spec, record=record, state=InstanceState(state),
                reason=reason, needs_recovery=True,
            )
        # a machine recorded as running gets here only with a live supervisor, which
        # re-adopted it before serving anything: nothing is left to recover
        return LoadedMachine(
            name=name, spec=spec, record=record, state=record.state, reason=record.reason,
        )

    def load_all(self, *, supervised: bool = False) -> list[LoadedMachine]:
        out: list[LoadedMachine] = []
        for name in self.names():
            if is_valid_name(name):
                out.append(self._load_existing(name, self.dirs.machines / name, supervised))
            else:
                out.append(self.load(name, supervised=supervised))
        return out

    # --- housekeeping ----------------------------------------------------------------

    def remove_leftovers(self) -> list[Path]:
        """Temp files and half-deleted dirs a crash left behind; run by the lock holder."""
        removed = remove_leftover_temps(self.dirs.root)
        removed += remove_leftover_temps(self.dirs.events)
        removed += remove_leftover_temps(self.dirs.machines)  # the listing cache's temps
        removed += remove_leftover_temps(self.dirs.services)  # service specs' temps
        try:
            entries = list(self.dirs.machines.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.name.startswith((_TRASH_PREFIX, _STAGING_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            elif entry.is_dir():
                removed += remove_leftover_temps(entry)
        return removed


def _read_named_spec(path: Path, name: str) -> MachineSpec:
    spec = read_spec(path)
    if spec.name != name:
        raise SpecError(path, f"key 'name' is {spec.name!r} but the directory is {name!r}")
    return spec


def trashed_name(path: Path) -> str | None:
    """The machine whose interrupted delete left `path`, or None for other leftovers."""
    if not path.name.startswith(_TRASH_PREFIX):
        return None
    return path.name.removeprefix(_TRASH_PREFIX).rsplit("-", 1)[0]
