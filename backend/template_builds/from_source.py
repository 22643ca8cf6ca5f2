"""`boxui template build FILE|ID`: read the spec, get the base image, pick the kind by
what the driver can do, and run the build (see `build`).

The daemon builds from a template's text (the client read the file, which the daemon
may not see from where it runs); the CLI's own path builds from a file or an id. Both
end in `build_from_text`, so they build the same thing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backend.drivers.base import HypervisorDriver
from backend.drivers.qemu.accel import AccelChoice
from backend.guest.errors import GuestImageError
from backend.guest.image_builder import build_default_image, load_current_image
from backend.images.store import find_image
from backend.state.names import is_valid_name
from backend.state.state_dir import StateDir
from backend.template_builds.snapshot import image_producer, snapshot_producer
from backend.templates.errors import TemplateError, TemplateNotFoundError
from backend.templates.layout import TemplateDir
from backend.templates.publish import BuildResult, build_template
from backend.templates.template_spec import parse_template


def locate_source(dirs: StateDir, source: str) -> Path:
    """A path to a template.toml, or the id of a template already in the state dir."""
    path = Path(source)
    if path.is_file():
        return path
    if is_valid_name(source) and TemplateDir.of(dirs, source).spec.is_file():
        return TemplateDir.of(dirs, source).spec
    raise TemplateNotFoundError(f"{source}: no such file, and no template with that id")


def read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read: {exc}") from None


async def build_from_source(
    dirs: StateDir,
    source: str,
    *,
    snapshot: bool,
    driver: HypervisorDriver,
    accel: AccelChoice,
    progress: Callable[[str], None] | None = None,
) -> tuple[BuildResult, list[str]]:
    """Build; return the result and notes for the user (e.g. snapshot not possible)."""
    path = locate_source(dirs, source)
    return await build_from_text(dirs, read_source(path), path, snapshot=snapshot,
                                 driver=driver, accel=accel, progress=progress)


async def build_from_text(
    dirs: StateDir,
    text: str,
    path: Path,
    *,
    snapshot: bool,
    driver: HypervisorDriver,
    accel: AccelChoice,
    progress: Callable[[str], None] | None = None,
    avoid_ports: Callable[[], set[int]] = set,
) -> tuple[BuildResult, list[str]]:
    """`path` only names the text in messages. `avoid_ports`: host ports a supervisor
    has given its machines, which a snapshot build's VMs must not pick."""
    config = parse_template(text, path)
    notes: list[str] = []
    say = progress or (lambda _m: None)
    try:
        image = load_current_image(dirs.images)
        if image is None:
            say("building the base guest image (first use)")
            image = await build_default_image(dirs.images, lambda _p, m: say(m))
    except GuestImageError as exc:
        raise TemplateError(str(exc)) from None
    image_hash, os_image = image.content_hash, config.os_image
    if os_image is not None:
        info = find_image(dirs, os_image)
        if info is None:
            raise TemplateError(f"{path}: image {os_image!r} is not built; build it with "
                                f"`boxui image build {os_image}`")
        image_hash = f"{image_hash}+{info.hash}"  # a rebuilt OS image is a new revision
    can_snapshot = driver.capabilities().snapshots
    if snapshot and not can_snapshot:
        notes.append(f"the {driver.capabilities().name} driver cannot save snapshots; "
                     "built an image template (machines cold-boot)")
    if snapshot and can_snapshot:
        result = await build_template(
            dirs, config, text, image_hash=image_hash, kind="snapshot",
            accel=accel.accel,
            producer=snapshot_producer(
                driver, image, accel, avoid_ports=avoid_ports,
                os_image=(dirs.images, os_image) if os_image else None),
            progress=progress)
    else:
        result = await build_template(
            dirs, config, text, image_hash=image_hash, kind="image",
            accel=accel.accel,
            producer=image_producer(os_image) if os_image else image_producer(),
            progress=progress)
    return result, notes
