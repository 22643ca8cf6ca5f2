"""What the app's new-machine form offers besides the default image: each role of each
template's current revision, with the size a restore needs (the form pre-fills it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.state_dir import StateDir, open_state_dir
from backend.templates.revision_store import load_revision, template_ids

TEMPLATE_PREFIX = "template:"


@dataclass(frozen=True)
class TemplateChoice:
    label: str
    value: str  # "template:<id>:<role>"
    vcpus: int
    memory_mib: int
    revision: str
    boot_args: str

    @property
    def ref(self) -> str:
        return self.value.removeprefix(TEMPLATE_PREFIX)


def template_choices(root: Path | StateDir) -> list[TemplateChoice]:
    """Every usable template role; a template that cannot be read is left out."""
    dirs = root if isinstance(root, StateDir) else open_state_dir(root, create=False)
    out: list[TemplateChoice] = []
    for template_id in template_ids(dirs):
        try:
            revision = load_revision(dirs, template_id)
        except BoxuiError:
            continue
        for role, variant in sorted(revision.variants.items()):
            how = "snapshot" if variant.snapshot is not None else "cold boot"
            out.append(TemplateChoice(
                label=f"template {template_id}:{role} ({how}, {variant.vcpus} vCPU, "
                      f"{variant.memory_mib} MiB)",
                value=f"{TEMPLATE_PREFIX}{template_id}:{role}",
                vcpus=variant.vcpus, memory_mib=variant.memory_mib,
                revision=revision.revision, boot_args=variant.boot_args))
    return out
