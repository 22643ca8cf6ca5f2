"""`state.json`: what boxui last knew about a machine's process. Only boxui writes it.

It records the persisted state (created / running / stopped) so that after a crash of
boxui the next supervisor knows which machines may still have a live hypervisor to
re-adopt, plus the identity of that process (pid *and* start time, so a reused pid is
never mistaken for our VM).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.errors import SpecError
from backend.state.accelerator import Accel
from backend.state.atomic_write import atomic_write_text
from backend.state.events import now_utc
from backend.state.lifecycle import InstanceState, PersistedState
from backend.state.validation_text import describe_validation_error

RECORD_SCHEMA_VERSION = 1


class RuntimeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=RECORD_SCHEMA_VERSION, ge=1)
    state: InstanceState = InstanceState.CREATING
    persisted: PersistedState = PersistedState.CREATED
    reason: str | None = None
    pid: int | None = Field(default=None, ge=1)
    process_start_time: float | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ports: dict[str, int] = Field(default_factory=dict)
    ip: str | None = None
    boot_id: str | None = None
    accel: Accel | None = None
    #: "<template>:<role>@<revision>" when this boot restored a snapshot, else None
    restored_from: str | None = None
    #: whether the restored guest's kernel RNG was re-seeded, and if not, why
    rng_reseeded: bool | None = None
    rng_note: str | None = None
    #: whether the restored guest's clock was set to the host's time, and if not, why
    #: (if not, it shows the time its snapshot was saved plus its own uptime)
    clock_set: bool | None = None
    clock_note: str | None = None
    #: whether the restored guest's hostname (and its /etc/hosts line) was made the
    #: machine's name, and if not, why (if not, it has its template's build VM's name)
    hostname_set: bool | None = None
    hostname_note: str | None = None
    #: set when this process was a warm pool member claimed by the machine: the name and
    #: run dir its hypervisor was launched under, which its command line still names (so
    #: re-adoption proves its identity by them); None for a process started as itself
    launched_as: str | None = None
    launched_run_dir: str | None = None
    restart_count: int = Field(default=0, ge=0)
    ever_started: bool = False
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    updated_at: datetime = Field(default_factory=now_utc)

    @property
    def needs_recovery(self) -> bool:
        return self.persisted.needs_recovery


def read_record(path: Path) -> RuntimeRecord:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(path, "file is missing") from None
    except OSError as exc:
        raise SpecError(path, f"cannot read: {exc.strerror}") from None
    try:
        return RuntimeRecord.model_validate_json(data)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise SpecError(path, f"invalid JSON: {exc.errors()[0]['msg']}") from None
        if any(e["type"] == "model_type" for e in exc.errors()):
            raise SpecError(path, "expected a JSON object") from None
        raise SpecError(path, describe_validation_error(exc)) from None


def write_record(path: Path, record: RuntimeRecord, *, sync_dir: bool = True) -> None:
    atomic_write_text(path, record.model_dump_json(indent=2) + "\n", mode=0o600,
                      sync_dir=sync_dir)
