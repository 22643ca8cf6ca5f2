"""Pool members on disk: `pools/members/<member>/` holds a member's keys, console log and
`member.json` (atomic); its sockets are in `run/_pools/<member>/`.

Members are not machines: nothing under `machines/` names them, so `ls`, the API's
machine list and the app never show them, and a member name may repeat a machine's
(their directories differ, and so does the QMP path on their command lines, which is
part of every identity check). The record is what a daemon that died leaves its
successor: which process is which member, of which revision, and whether it was being
claimed (and by which machine) when the daemon died.
"""

from __future__ import annotations

import os
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.drivers.qemu.driver import identity_args
from backend.state.accelerator import Accel
from backend.state.atomic_write import atomic_write_text
from backend.state.events import now_utc
from backend.state.state_dir import StateDir, check_private_dir
from backend.supervision.pool_paths import MEMBER_FILE, member_run_dir, members_root

MemberState = Literal["warming", "ready", "claimed"]


class MemberRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member: str
    template: str  # "<id>:<role>"
    revision: str
    memory_mib: int = Field(ge=1)
    state: MemberState = "warming"
    pid: int | None = None
    process_start_time: float | None = None
    ssh_port: int = Field(ge=1, le=65535)
    boot_id: str
    accel: Accel
    run_dir: str
    claimed_by: str | None = None
    created_at: datetime = Field(default_factory=now_utc)

    def identity(self) -> tuple[str, ...]:
        return tuple(identity_args(self.member, Path(self.run_dir)))


class MemberStore:
    def __init__(self, dirs: StateDir) -> None:
        self.dirs = dirs
        self.root = members_root(dirs)

    @staticmethod
    def new_name() -> str:
        return f"pool-{secrets.token_hex(4)}"

    def member_dir(self, member: str) -> Path:
        return self.root / member

    def run_dir(self, member: str) -> Path:
        return member_run_dir(self.dirs, member)

    def make_dirs(self, member: str) -> tuple[Path, Path]:
        member_dir = self.member_dir(member)
        member_dir.mkdir(mode=0o700, parents=True)
        run_dir = self.run_dir(member)
        run_dir.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_dir.parent.mkdir(mode=0o700, exist_ok=True)
        check_private_dir(run_dir.parent)
        run_dir.mkdir(mode=0o700)
        return member_dir, run_dir

    def write(self, record: MemberRecord) -> None:
        atomic_write_text(self.member_dir(record.member) / MEMBER_FILE,
                          record.model_dump_json(indent=2) + "\n")

    def records(self) -> list[MemberRecord | str]:
        """Every member's record; a member whose record is unreadable is its name."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        found: list[MemberRecord | str] = []
        for name in names:
            try:
                found.append(MemberRecord.model_validate_json(
                    (self.root / name / MEMBER_FILE).read_bytes()))
            except (OSError, ValidationError):
                found.append(name)
        return found

    def remove(self, member: str, run_dir: Path | None = None) -> None:
        shutil.rmtree(run_dir or self.run_dir(member), ignore_errors=True)
        shutil.rmtree(self.member_dir(member), ignore_errors=True)
