"""Errors a user can read in one line.

Every failure that can reach a user is a `BoxuiError` whose `str()` is a single line
saying what went wrong and where, so the CLI and the app can show it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class BoxuiError(Exception):
    """Base of every error boxui reports to a user."""

    #: stable machine-readable code, used by `--json` output and (later) the API
    code = "error"

    def __str__(self) -> str:
        text = super().__str__()
        return " ".join(text.split())  # always one line


class InvalidNameError(BoxuiError):
    code = "invalid_name"


class StateDirError(BoxuiError):
    code = "state_dir"


class StateDirInUseError(StateDirError):
    code = "state_dir_in_use"

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        owner = f"boxui pid {pid}" if pid is not None else "another boxui (pid unknown)"
        super().__init__(f"state dir is in use by {owner}")


class MachineNotFoundError(BoxuiError):
    code = "not_found"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no machine named {name!r}")


class MachineExistsError(BoxuiError):
    code = "exists"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a machine named {name!r} already exists")


class SpecError(BoxuiError):
    """A machine.toml (or state.json) that cannot be read or is invalid."""

    code = "invalid_spec"

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = " ".join(reason.split())
        super().__init__(f"{path}: {self.reason}")


class IllegalTransitionError(BoxuiError):
    code = "illegal_transition"

    def __init__(self, machine: str, from_state: str, event_type: str) -> None:
        self.machine = machine
        self.from_state = from_state
        self.event_type = event_type
        super().__init__(
            f"illegal transition for machine {machine!r}: "
            f"event {event_type} is not allowed from state {from_state!r}"
        )


class EventLogError(BoxuiError):
    code = "event_log"


class StorageError(BoxuiError):
    """A write that failed (disk full, permissions); the previous file is intact."""

    code = "storage"
