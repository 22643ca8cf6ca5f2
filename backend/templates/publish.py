"""One template build: all variants into a staging dir, then renamed into place whole.

Order, and why: every variant is produced under `artifacts/.build-<rev>-<random>/`;
`revision.json` is written last; the staging dir is fsynced and renamed to
`artifacts/<rev>/`; only then is `current` switched (see `revision_store`). A build that
fails, is interrupted (Ctrl-C, a cancelled task) or is killed leaves no dir named like a
revision and never moves `current`; what a kill leaves behind is a `.build-*` dir that
the next build of the template removes. The same inputs give the same revision name, so
a second build finds the finished dir and is a cache hit without producing anything.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.errors import SpecError
from backend.state.accelerator import Accel
from backend.state.atomic_write import atomic_write_text, fsync_dir, fsync_tree
from backend.state.state_dir import StateDir
from backend.templates.cache_key import BuildInputs, cache_key, revision_id
from backend.templates.errors import TemplateError
from backend.templates.layout import BUILD_PREFIX, TemplateDir
from backend.templates.revision import (
    TemplateKind,
    TemplateRevision,
    VariantArtifacts,
    read_revision,
    write_revision,
)
from backend.templates.revision_store import (
    current_revision,
    remove_leftovers,
    switch_current,
    template_lock,
)
from backend.templates.template_spec import TemplateConfig, TemplateVariant

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class VariantJob:
    """One variant to produce into `directory` (its `<role>/` dir in the staging area)."""

    template_id: str
    variant: TemplateVariant
    name: str
    profile: str
    inputs: BuildInputs
    key: str
    directory: Path


Producer = Callable[[VariantJob], Awaitable[VariantArtifacts]]


@dataclass(frozen=True)
class BuildResult:
    template_id: str
    revision: str
    kind: TemplateKind
    cache_hit: bool
    previous: str | None
    keys: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"template_id": self.template_id, "revision": self.revision,
                "kind": self.kind, "cache_hit": self.cache_hit, "previous": self.previous,
                "cache_keys": self.keys}


def plan_jobs(config: TemplateConfig, image_hash: str, kind: TemplateKind,
              accel: Accel, staging: Path) -> list[VariantJob]:
    jobs = []
    for variant in config.variants:
        name, profile = config.variant_name(variant), config.variant_profile(variant)
        inputs = BuildInputs(
            image_hash=image_hash, profile=profile, role=variant.role, name=name,
            vcpus=variant.vcpus, memory_mib=variant.memory_mib,
            data_disk_mib=variant.data_disk_mib, boot_args=variant.boot_args, kind=kind,
            accel=accel if kind == "snapshot" else "",
        )
        jobs.append(VariantJob(config.template_id, variant, name, profile, inputs,
                               cache_key(inputs), staging / variant.role))
    return jobs


async def build_template(
    dirs: StateDir,
    config: TemplateConfig,
    source_text: str,
    *,
    image_hash: str,
    kind: TemplateKind,
    accel: Accel,
    producer: Producer,
    progress: ProgressFn | None = None,
) -> BuildResult:
    tdir = TemplateDir.of(dirs, config.template_id)
    say = progress or (lambda _msg: None)
    with template_lock(tdir):
        await asyncio.to_thread(remove_leftovers, tdir)
        previous = current_revision(tdir)
        tdir.artifacts.mkdir(mode=0o700, exist_ok=True)
        probe = plan_jobs(config, image_hash, kind, accel, tdir.artifacts)
        keys = {job.variant.role: job.key for job in probe}
        revision = revision_id(config.template_id, list(keys.values()))
        final = tdir.revision_dir(revision)
        if _complete(final):
            await asyncio.to_thread(_commit_current, tdir, revision, source_text)
            return BuildResult(config.template_id, revision, kind, True, previous, keys)
        staging = tdir.artifacts / f"{BUILD_PREFIX}{revision}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            produced: dict[str, VariantArtifacts] = {}
            for job in plan_jobs(config, image_hash, kind, accel, staging):
                job.directory.mkdir(mode=0o700)
                say(f"building {job.name} (role {job.variant.role}, {kind})")
                produced[job.variant.role] = await producer(job)
            record = TemplateRevision(template_id=config.template_id, revision=revision,
                                      kind=kind, image_hash=image_hash, variants=produced)
            await asyncio.to_thread(_seal, staging, record, source_text, final)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, True))
            raise
        await asyncio.to_thread(_commit_current, tdir, revision, source_text)
        return BuildResult(config.template_id, revision, kind, False, previous, keys)


def _complete(directory: Path) -> bool:
    if not directory.is_dir():
        return False
    try:
        read_revision(directory)
    except SpecError:
        return False
    return True


def _seal(staging: Path, record: TemplateRevision, source_text: str, final: Path) -> None:
    atomic_write_text(staging / "template.toml", source_text)
    write_revision(staging, record)  # last: its presence is what makes a revision
    fsync_tree(staging)
    if final.exists():  # an unreadable leftover under the revision's name
        raise TemplateError(f"{final} exists but is not a complete revision; remove it")
    os.rename(staging, final)
    fsync_dir(final.parent)


def _commit_current(tdir: TemplateDir, revision: str, source_text: str) -> None:
    atomic_write_text(tdir.spec, source_text)
    switch_current(tdir, revision)
