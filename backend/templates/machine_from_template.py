"""Turning `ID[:ROLE]` into a machine spec: the variant's size and boot args, and the
revision the machine will restore from (pinned, so a later rebuild of the template
cannot change what an existing machine wakes up as)."""

from __future__ import annotations

from backend.errors import BoxuiError
from backend.state.accelerator import AccelRequest
from backend.state.machine_spec import MachineSpec, RestartPolicy
from backend.state.machine_store import MachineStore
from backend.state.state_dir import StateDir
from backend.templates.restore_plan import parse_ref, pick_variant
from backend.templates.revision_store import load_revision


def spec_from_template(
    dirs: StateDir,
    name: str,
    ref: str,
    *,
    vcpus: int | None = None,
    memory_mib: int | None = None,
    accel: AccelRequest = "auto",
    restart: RestartPolicy = "never",
) -> MachineSpec:
    """A spec for `name` made from template `ref`; explicit vcpus/memory are kept as
    asked, so a snapshot that cannot serve them is refused rather than overridden."""
    template_id, role = parse_ref(ref)
    revision = load_revision(dirs, template_id)
    variant = pick_variant(revision, role)
    return MachineSpec(
        name=name,
        vcpus=variant.vcpus if vcpus is None else vcpus,
        memory_mib=variant.memory_mib if memory_mib is None else memory_mib,
        cmdline=variant.boot_args,
        accel=accel,
        restart=restart,
        template=f"{template_id}:{variant.role}",
        template_revision=revision.revision,
        image=variant.os_image,  # boots from a disk of its own: an overlay on the template's
    )


def machines_using(dirs: StateDir, template_id: str, revision: str | None = None) -> list[str]:
    """Machines made from a template (or one revision of it), by their machine.toml."""
    store = MachineStore(dirs)
    users = []
    for name in store.names():
        try:
            spec = store.load_spec(name)
        except BoxuiError:
            continue
        if spec.template and parse_ref(spec.template)[0] == template_id and (
                revision is None or spec.template_revision == revision):
            users.append(name)
    return users
