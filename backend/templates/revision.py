"""`revision.json`: what one template build produced, written last into its revision dir.

A revision dir without a valid `revision.json` is not a revision (an interrupted build
leaves, at worst, a `.build-*` dir that nothing reads).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.errors import SpecError
from backend.state.accelerator import BuildAccel
from backend.state.atomic_write import atomic_write_text
from backend.state.events import now_utc
from backend.state.validation_text import describe_validation_error

REVISION_SCHEMA_VERSION = 1
REVISION_FILE = "revision.json"

TemplateKind = Literal["image", "snapshot"]


class SnapshotInfo(BaseModel):
    """A variant's memory snapshot; vcpus, memory and boot args must match at restore."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    created_at: datetime
    #: size of the saved state file (device state, plus the non-zero memory pages when
    #: the variant has no RAM file)
    vmstate_size_bytes: int = Field(ge=0)
    #: disk taken by the variant's RAM file (sparse: about the memory the guest touched)
    ram_file_bytes: int = Field(default=0, ge=0)
    #: guest memory the snapshot covers
    mem_size_bytes: int = Field(ge=0)
    #: the whole kernel command line the snapshotted guest booted with
    boot_args: str
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=64)
    accel: BuildAccel
    #: the guest's name and boot id as baked into its memory (hostname, console marker)
    guest_name: str
    boot_id: str
    #: seconds from launch to ready and to saved, at build time
    boot_seconds: float = 0.0
    save_seconds: float = 0.0
    #: what the restore agent saved with the guest expects: 1 entropy only (revisions
    #: built before boxui set restored clocks), 2 entropy and the host's time
    agent_protocol: int = Field(default=1, ge=1)


class VariantArtifacts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    role: str
    profile: str
    vcpus: int
    memory_mib: int
    data_disk_mib: int
    boot_args: str
    cache_key: str
    #: file names inside the revision's `<role>/` dir (None: this revision has none)
    kernel: str | None = None
    initrd: str | None = None
    snapshot_file: str | None = None
    #: the snapshot's guest RAM, mapped copy-on-write at restore; None in revisions
    #: built before boxui kept RAM in a file (their RAM is inside `snapshot_file`)
    ram_file: str | None = None
    snapshot: SnapshotInfo | None = None
    #: the OS image the variant boots (None: the default guest) and, in a snapshot, its
    #: disk as frozen with the memory (a qcow2 overlay on the image, never written again)
    os_image: str | None = None
    disk_file: str | None = None


class TemplateRevision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=REVISION_SCHEMA_VERSION, ge=1)
    template_id: str
    revision: str
    kind: TemplateKind
    image_hash: str
    built_at: datetime = Field(default_factory=now_utc)
    variants: dict[str, VariantArtifacts]

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > REVISION_SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is newer than this boxui understands "
                             f"({REVISION_SCHEMA_VERSION}); upgrade boxui")
        return value


def read_revision(directory: Path) -> TemplateRevision:
    path = directory / REVISION_FILE
    try:
        return TemplateRevision.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise SpecError(path, "file is missing (an incomplete revision)") from None
    except OSError as exc:
        raise SpecError(path, f"cannot read: {exc.strerror}") from None
    except ValidationError as exc:
        raise SpecError(path, describe_validation_error(exc)) from None


def write_revision(directory: Path, revision: TemplateRevision) -> None:
    atomic_write_text(directory / REVISION_FILE, revision.model_dump_json(indent=2) + "\n")
