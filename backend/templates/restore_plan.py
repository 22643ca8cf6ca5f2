"""Starting a template machine: restore its snapshot, or refuse, or cold-boot.

A snapshot holds a running guest, so everything the guest saw when it booted must be
the same at restore: vcpus, memory, the accelerator, and the kernel command line
(which carries the build VM's name and boot id, and any extra parameters). A machine
that asks for something else is refused with every difference named; restoring anyway
would corrupt or crash the guest, and cold-booting instead would quietly not be what
the machine was made for. An image template, or a driver that cannot restore, means a
cold boot, which is always correct.

A snapshot of an OS image carries a frozen disk: a clone's first start restores onto an
overlay of its own on that disk. From then on its disk holds what the clone wrote, which
no snapshot knows: later starts cold-boot from it (restoring again would hand the old
page cache a filesystem that has moved on).
"""

from __future__ import annotations

import filecmp
from dataclasses import dataclass
from pathlib import Path

from backend.drivers.base import DriverCapabilities
from backend.drivers.qemu.accel import AccelChoice
from backend.drivers.qemu.cmdline import kernel_cmdline_for
from backend.guest.debian_initrd import DEBIAN_KERNEL_ARGS
from backend.guest.machine_seed import (
    CLIENT_KEY_FILE,
    CLIENT_PUB_FILE,
    HOST_KEY_FILE,
    HOST_PUB_FILE,
)
from backend.state.atomic_write import atomic_write_bytes
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import StateDir
from backend.templates.errors import SnapshotMismatchError, TemplateError
from backend.templates.layout import TemplateDir
from backend.templates.revision import SnapshotInfo, TemplateRevision, VariantArtifacts
from backend.templates.revision_store import load_revision

KEY_FILES = (HOST_KEY_FILE, HOST_PUB_FILE, CLIENT_PUB_FILE, CLIENT_KEY_FILE)
#: a disk machine's own disk in its directory (as `backend.supervision.machine_disk`
#: names it; that layer is above this one)
MACHINE_DISK_FILE = "disk.qcow2"

SHARED_STATE_CAVEAT = (
    "restored from a shared memory snapshot: it shares its SSH host key and the RNG "
    "state of one boot with every machine restored from the same snapshot"
)


@dataclass(frozen=True)
class RestorePlan:
    template: str  # "<id>:<role>"
    revision: str
    snapshot: SnapshotInfo
    snapshot_file: Path
    kernel: Path
    initrd: Path
    role_dir: Path
    #: the snapshot's RAM file, or None when its RAM is inside `snapshot_file`
    ram_file: Path | None = None
    #: the disk frozen with the snapshot (an OS image's variant), or None
    disk: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.template}@{self.revision}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    template_id, _, role = ref.partition(":")
    return template_id, role or None


def pick_variant(revision: TemplateRevision, role: str | None) -> VariantArtifacts:
    if role is None:
        if len(revision.variants) != 1:
            roles = ", ".join(sorted(revision.variants))
            raise TemplateError(f"template {revision.template_id!r} has several roles "
                                f"({roles}); name one as {revision.template_id}:ROLE")
        return next(iter(revision.variants.values()))
    try:
        return revision.variants[role]
    except KeyError:
        roles = ", ".join(sorted(revision.variants))
        raise TemplateError(f"template {revision.template_id!r} has no role {role!r} "
                            f"(roles: {roles})") from None


def mismatches(info: SnapshotInfo, *, vcpus: int, memory_mib: int, cmdline: str,
               accel: AccelChoice) -> list[str]:
    """Every way a request differs from what the snapshot was taken with."""
    found = []
    if vcpus != info.vcpus:
        found.append(f"vcpus {vcpus} requested, snapshot has {info.vcpus}")
    if memory_mib != info.memory_mib:
        found.append(f"memory_mib {memory_mib} requested, snapshot has {info.memory_mib}")
    if accel.accel != info.accel:
        found.append(f"accel {accel.accel} requested, snapshot was taken under {info.accel}")
    wanted = kernel_cmdline_for(info.guest_name, info.boot_id, accel.accel, accel.tsc_khz,
                                cmdline)
    if accel.accel == info.accel and wanted != info.boot_args:
        found.append(f"boot args {wanted!r} requested, snapshot has {info.boot_args!r}")
    return found


def plan_restore(dirs: StateDir, spec: MachineSpec, accel: AccelChoice,
                 capabilities: DriverCapabilities) -> RestorePlan | None:
    """How to start `spec`: a RestorePlan, or None for a cold boot; raises
    SnapshotMismatchError if the snapshot cannot serve this machine."""
    if spec.template is None:
        return None
    template_id, role = parse_ref(spec.template)
    revision = load_revision(dirs, template_id, spec.template_revision)
    variant = pick_variant(revision, role)
    ref = f"{template_id}:{variant.role}"
    if revision.kind != "snapshot" or variant.snapshot is None or not capabilities.snapshots:
        return None
    if variant.disk_file and (dirs.machine_dir(spec.name) / MACHINE_DISK_FILE).exists():
        return None  # restored once: its own disk has moved on from the snapshot
    cmdline = " ".join(filter(None, [DEBIAN_KERNEL_ARGS, spec.cmdline])) \
        if variant.disk_file else spec.cmdline
    problems = mismatches(variant.snapshot, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                          cmdline=cmdline, accel=accel)
    if problems:
        raise SnapshotMismatchError(
            f"{spec.name}: snapshot of template {ref} (revision {revision.revision}) does "
            f"not match: {'; '.join(problems)}. Restore needs the same values: drop the "
            "override, or build a variant with them")
    role_dir = TemplateDir.of(dirs, template_id).revision_dir(revision.revision) / variant.role
    files = [role_dir / str(name) for name in
             (variant.snapshot_file, variant.kernel, variant.initrd, *KEY_FILES)]
    ram_file = role_dir / variant.ram_file if variant.ram_file else None
    disk = role_dir / variant.disk_file if variant.disk_file else None
    needed = [*files, *(f for f in (ram_file, disk) if f is not None)]
    missing = [f.name for f in needed if not f.is_file()]
    if missing:
        raise TemplateError(f"template {ref} revision {revision.revision} is missing "
                            f"{', '.join(missing)} in {role_dir}; rebuild it")
    return RestorePlan(ref, revision.revision, variant.snapshot, files[0], files[1], files[2],
                       role_dir, ram_file, disk)


def install_snapshot_keys(plan: RestorePlan, machine_dir: Path) -> None:
    """Give the machine the keys baked into the snapshot, so boxui can reach it.

    The guest in the snapshot trusts the template's client key and answers with the
    template's host key; a machine's own keys would lock boxui out.
    """
    for name in KEY_FILES:
        source, target = plan.role_dir / name, machine_dir / name
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        mode = 0o644 if name.endswith(".pub") else 0o600
        atomic_write_bytes(target, source.read_bytes(), mode=mode)


# what the restore agent did, one part each: the record's flag and note fields, then
# what `boxui info` says when it was done, when it failed (with the note), and before
_AGENT_PARTS = (
    ("rng_reseeded", "rng_note",
     "its kernel RNG was re-seeded with fresh host entropy at restore",
     "its kernel RNG could NOT be re-seeded ({note})", "its kernel RNG is not re-seeded yet"),
    ("clock_set", "clock_note", "its clock was set to the host's time at restore",
     "its clock could NOT be set ({note}): it runs from the moment the snapshot was saved",
     "its clock is not set yet"),
    ("hostname_set", "hostname_note", "its hostname was made the machine's name",
     "its hostname could NOT be set ({note}): it has its template's name",
     "its hostname is not set yet"),
)


def shared_state_note(spec: MachineSpec | None, record: object | None) -> str | None:
    """What `boxui info` says about a restored machine: what it shares with sibling
    clones, and what was made its own at restore. None for other machines."""
    restored_from = getattr(record, "restored_from", None)
    if restored_from is None and (spec is None or spec.template is None):
        return None
    if restored_from is None:
        return ("made from a template: if it has a snapshot, this machine is restored from "
                "it at start and then shares its SSH host key and boot RNG state with every "
                "machine restored from the same snapshot")
    said = []
    for flag, note, done, failed, pending in _AGENT_PARTS:
        outcome = getattr(record, flag, None)
        said.append(done if outcome else pending if outcome is None
                    else failed.format(note=getattr(record, note, "")))
    return f"{SHARED_STATE_CAVEAT} ({restored_from}); {'; '.join(said)}"
