"""A build is all-or-nothing and `current` only ever moves by one atomic rename."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.state.state_dir import StateDir
from backend.template_builds.snapshot import image_producer
from backend.templates.layout import TemplateDir
from backend.templates.publish import BuildResult, VariantJob, build_template
from backend.templates.revision import VariantArtifacts
from backend.templates.revision_store import current_revision, revisions, switch_current
from backend.templates.template_spec import TemplateConfig, parse_template

TEXT = 'template_id = "web"\n[[variants]]\nrole = "worker"\n[[variants]]\nrole = "db"\n'


def config(text: str = TEXT) -> TemplateConfig:
    return parse_template(text, Path("t.toml"))


async def build(dirs: StateDir, producer=None, text: str = TEXT,  # type: ignore[no-untyped-def]
                image_hash: str = "ab" * 32) -> BuildResult:
    return await build_template(dirs, config(text), text, image_hash=image_hash, kind="image",
                                accel="tcg", producer=producer or image_producer())


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_build_then_cache_hit_then_new_revision(dirs: StateDir) -> None:
    tdir = TemplateDir.of(dirs, "web")
    first = await build(dirs)
    assert not first.cache_hit and first.previous is None
    assert current_revision(tdir) == first.revision
    assert os.readlink(tdir.current) == f"artifacts/{first.revision}"
    assert tdir.spec.read_text() == TEXT
    assert (tdir.revision_dir(first.revision) / "template.toml").read_text() == TEXT

    calls: list[str] = []

    async def counting(job: VariantJob) -> VariantArtifacts:
        calls.append(job.variant.role)
        return await image_producer()(job)

    again = await build(dirs, counting)
    assert again.cache_hit and again.revision == first.revision and calls == []

    changed = await build(dirs, counting, image_hash="cd" * 32)
    assert not changed.cache_hit and changed.previous == first.revision
    assert sorted(calls) == ["db", "worker"]
    assert current_revision(tdir) == changed.revision
    assert [r.revision for r in revisions(tdir)] == [first.revision, changed.revision]


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt(),
                                     asyncio.CancelledError()])
async def test_failed_or_interrupted_build_leaves_nothing_and_keeps_current(
        dirs: StateDir, failure: BaseException) -> None:
    tdir = TemplateDir.of(dirs, "web")
    first = await build(dirs)
    before = names_in(tdir.artifacts)

    async def fails_on_second_variant(job: VariantJob) -> VariantArtifacts:
        (job.directory / "half-written").write_bytes(b"x" * 100)
        if job.variant.role == "db":
            raise failure
        return await image_producer()(job)

    with pytest.raises(type(failure)):
        await build(dirs, fails_on_second_variant, image_hash="cd" * 32)
    assert names_in(tdir.artifacts) == before  # no revision, no staging dir
    assert current_revision(tdir) == first.revision
    assert tdir.spec.read_text() == TEXT


async def test_leftovers_of_a_killed_build_are_removed_by_the_next(dirs: StateDir) -> None:
    tdir = TemplateDir.of(dirs, "web")
    await build(dirs)
    killed = tdir.artifacts / ".build-deadbeefdeadbeef-0000"
    (killed / "worker").mkdir(parents=True)
    (killed / "worker" / "snapshot.bin").write_bytes(b"partial")
    (tdir.root / ".current.tmp-1234").symlink_to("artifacts/nowhere")
    # the killed build's VM, still running: named by a file in the build dir
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               f"path={killed}/worker/console.log"])
    assert len(revisions(tdir)) == 1  # never mistaken for a revision
    try:
        await build(dirs, image_hash="cd" * 32)
        assert orphan.wait(timeout=10) == -9
    finally:
        orphan.kill()
    assert not killed.exists() and not (tdir.root / ".current.tmp-1234").is_symlink()


async def test_current_switch_is_one_rename_of_a_complete_link(
        dirs: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    tdir = TemplateDir.of(dirs, "web")
    old = (await build(dirs)).revision
    new = (await build(dirs, image_hash="cd" * 32)).revision
    switch_current(tdir, old)
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def watching_replace(src: str | Path, dst: str | Path) -> None:
        # at the moment of the switch: the old link is intact, the new one is complete
        seen.append((os.readlink(tdir.current), os.readlink(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    switch_current(tdir, new)
    assert seen == [(f"artifacts/{old}", f"artifacts/{new}")]
    assert current_revision(tdir) == new

    def crash(src: str | Path, dst: str | Path) -> None:
        raise OSError("power lost")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        switch_current(tdir, old)
    assert current_revision(tdir) == new  # untouched, and no temp link left behind
    assert [n for n in names_in(tdir.root) if n.startswith(".current")] == []


async def test_switching_to_an_incomplete_revision_is_refused(dirs: StateDir) -> None:
    tdir = TemplateDir.of(dirs, "web")
    first = (await build(dirs)).revision
    (tdir.artifacts / "feedfacefeedface").mkdir()
    with pytest.raises(Exception, match="not complete"):
        switch_current(tdir, "feedfacefeedface")
    assert current_revision(tdir) == first


async def test_a_second_build_at_the_same_time_is_refused(dirs: StateDir) -> None:
    gate = asyncio.Event()

    async def slow(job: VariantJob) -> VariantArtifacts:
        await gate.wait()
        return await image_producer()(job)

    first = asyncio.create_task(build(dirs, slow))
    await asyncio.sleep(0.05)
    with pytest.raises(Exception, match="being built or removed"):
        await build(dirs)
    gate.set()
    assert not (await first).cache_hit
