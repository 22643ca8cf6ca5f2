"""Reading and changing a template's revisions: the `current` link, listing, removal.

`current` is a relative symlink switched by creating a new link under a temporary name
and renaming it over the old one (rename is atomic), then fsyncing the directory: a
reader or a crash sees the old revision or the new one, never neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from backend.errors import SpecError
from backend.state.atomic_write import fsync_dir
from backend.state.names import is_valid_name
from backend.state.state_dir import StateDir
from backend.templates.errors import TemplateError, TemplateNotFoundError
from backend.templates.layout import BUILD_PREFIX, TemplateDir, templates_root
from backend.templates.revision import TemplateRevision, read_revision


@contextlib.contextmanager
def template_lock(tdir: TemplateDir) -> Iterator[None]:
    """One build or removal of a template at a time; a second one is refused at once."""
    tdir.root.parent.mkdir(mode=0o700, exist_ok=True)
    tdir.root.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(tdir.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TemplateError(f"template {tdir.template_id!r} is being built or removed "
                                "by another boxui; try again when it is done") from None
        yield
    finally:
        os.close(fd)


def current_revision(tdir: TemplateDir) -> str | None:
    try:
        target = os.readlink(tdir.current)
    except OSError:
        return None
    name = Path(target).name
    return name if (tdir.revision_dir(name) / "revision.json").is_file() else None


def switch_current(tdir: TemplateDir, revision: str) -> None:
    """Point `current` at `revision`, atomically (see module docstring)."""
    if not (tdir.revision_dir(revision) / "revision.json").is_file():
        raise TemplateError(f"template {tdir.template_id}: revision {revision} is not complete")
    tmp = tdir.root / f".current.tmp-{secrets.token_hex(4)}"
    os.symlink(Path("artifacts") / revision, tmp)
    try:
        os.replace(tmp, tdir.current)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(tdir.root)


def kill_build_vms(build_dir: Path) -> None:
    """A build killed with SIGKILL leaves its (daemonized) build VM running; it is the
    only process whose command line names a file in the build dir."""
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(build_dir) + "/" in arg for arg in proc.info["cmdline"] or []):
                proc.kill()


def remove_leftovers(tdir: TemplateDir) -> list[Path]:
    """Build dirs and link temps a killed build left; call with the template lock held."""
    removed: list[Path] = []
    for parent, prefix in ((tdir.artifacts, BUILD_PREFIX), (tdir.root, ".current.tmp-")):
        with contextlib.suppress(FileNotFoundError):
            for entry in parent.iterdir():
                if entry.name.startswith(prefix):
                    if entry.is_dir() and not entry.is_symlink():
                        kill_build_vms(entry)
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry)
    return removed


def revisions(tdir: TemplateDir) -> list[TemplateRevision]:
    """Finished revisions, oldest first; half-built or unreadable ones are skipped."""
    found: list[TemplateRevision] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in tdir.artifacts.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            with contextlib.suppress(SpecError):
                found.append(read_revision(entry))
    return sorted(found, key=lambda r: r.built_at)


def template_ids(dirs: StateDir) -> list[str]:
    root = templates_root(dirs)
    try:
        return sorted(e.name for e in root.iterdir() if e.is_dir() and is_valid_name(e.name))
    except FileNotFoundError:
        return []


def image_users(dirs: StateDir, image: str) -> list[str]:
    """Template revisions whose variants boot OS image `image`: their frozen disks are
    overlays on it, so removing the image would break the template and every clone."""
    users: list[str] = []
    for template_id in template_ids(dirs):
        for revision in revisions(TemplateDir.of(dirs, template_id)):
            if any(v.os_image == image for v in revision.variants.values()):
                users.append(f"template {template_id} revision {revision.revision}")
    return users


def load_revision(dirs: StateDir, template_id: str,
                  revision: str | None = None) -> TemplateRevision:
    """A revision of a template (its current one unless named)."""
    tdir = TemplateDir.of(dirs, template_id)
    if not tdir.root.is_dir():
        raise TemplateNotFoundError(f"no template named {template_id!r} "
                                    "(build one with: boxui template build FILE)")
    chosen = revision or current_revision(tdir)
    if chosen is None:
        raise TemplateNotFoundError(f"template {template_id!r} has no finished revision; "
                                    "build it with: boxui template build")
    directory = tdir.revision_dir(chosen)
    if not directory.is_dir():
        raise TemplateNotFoundError(f"template {template_id!r} has no revision {chosen!r}")
    try:
        return read_revision(directory)
    except SpecError as exc:
        raise TemplateError(str(exc)) from None


@dataclass(frozen=True)
class TemplateSummary:
    template_id: str
    current: str | None
    kind: str | None
    roles: list[str]
    revisions: int

    def as_json(self) -> dict[str, object]:
        return {"template_id": self.template_id, "current": self.current, "kind": self.kind,
                "roles": self.roles, "revisions": self.revisions}


def summaries(dirs: StateDir) -> list[TemplateSummary]:
    out: list[TemplateSummary] = []
    for template_id in template_ids(dirs):
        tdir = TemplateDir.of(dirs, template_id)
        revs = revisions(tdir)
        current = current_revision(tdir)
        chosen = next((r for r in revs if r.revision == current), None)
        out.append(TemplateSummary(
            template_id, current, chosen.kind if chosen else None,
            sorted(chosen.variants) if chosen else [], len(revs)))
    return out


def remove(dirs: StateDir, template_id: str, revision: str | None,
           users: list[str]) -> list[str]:
    """Delete a whole template, or one revision that is not `current`; return what went.

    `users` are machines restored from it: removing their snapshot would leave them
    unable to start, so the caller must have decided (`--force`) before passing any.
    """
    tdir = TemplateDir.of(dirs, template_id)
    if not tdir.root.is_dir():
        raise TemplateNotFoundError(f"no template named {template_id!r}")
    with template_lock(tdir):
        if revision is None:
            trash = tdir.root.parent / f".deleting-{template_id}-{secrets.token_hex(4)}"
            os.rename(tdir.root, trash)  # all or nothing, as far as any reader can see
            fsync_dir(tdir.root.parent)
            shutil.rmtree(trash, ignore_errors=True)
            return [template_id]
        directory = tdir.revision_dir(revision)
        if revision.startswith(".") or not directory.is_dir():
            raise TemplateNotFoundError(f"template {template_id!r} has no revision {revision!r}")
        if current_revision(tdir) == revision:
            raise TemplateError(f"revision {revision} is template {template_id!r}'s current "
                                "one; remove the whole template or build another first")
        trash = tdir.artifacts / f"{BUILD_PREFIX}deleting-{revision}"
        os.rename(directory, trash)
        fsync_dir(tdir.artifacts)
        shutil.rmtree(trash, ignore_errors=True)
        return [f"{template_id}@{revision}"]

