"""The new-machine form: every field is checked as you type, errors shown inline, and
nothing is submitted until the whole form is valid.

The image choice lists what `boxui image ls` does (the default guest, built OS images
and recipes not built yet, which the app builds first with its progress in the row) and
the state dir's templates; both are read off the UI thread. Picking a template fills in
the size its snapshot needs; picking an OS image enables its disk size. Mounts and
ports take the text the CLI's `--mount` and `--port` take, several separated by spaces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from backend.errors import BoxuiError
from backend.images.catalog import DEFAULT_NAME, ImageListing
from backend.state.disk_size import format_size, parse_size
from backend.state.machine_spec import MAX_MEMORY_MIB, MAX_VCPUS, MachineSpec
from backend.state.names import validate_name
from backend.templates.choices import TemplateChoice, template_choices
from boxui.tui.forwards import mount_error, port_error, split_entries

IMAGES = [("default (busybox + dropbear)", DEFAULT_NAME)]
FIELDS = ("name", "vcpus", "memory", "disk", "mounts", "ports")

ImagesLoader = Callable[[], Awaitable[list[ImageListing]]]


@dataclass(frozen=True)
class NewMachine:
    """What the form asks for: the spec, the CLI-style mounts and ports, and the OS
    image to build first (None: nothing to build)."""

    spec: MachineSpec
    mounts: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    build_image: str | None = None


@dataclass(frozen=True)
class FormValues:
    name: str
    vcpus: str
    memory: str
    disk: str = ""
    mounts: str = ""
    ports: str = ""
    os_image: bool = False


def image_label(image: ImageListing) -> str:
    if image.kind == "default":
        return IMAGES[0][0]
    if not image.built:
        return f"{image.name} (not built: built first)"
    size = f", {format_size(image.size_bytes)}" if image.size_bytes else ""
    return f"{image.name} (Debian{size})"


def check_fields(name: str, vcpus: str, memory: str, taken: set[str],
                 values: FormValues | None = None) -> dict[str, str]:
    """Field id -> error; empty when the form is valid."""
    errors: dict[str, str] = {}
    try:
        validate_name(name)
        if name in taken:
            errors["name"] = f"a machine named {name!r} already exists"
    except BoxuiError:
        errors["name"] = ("use 1-63 of a-z, 0-9, '-', not starting with '-'" if name
                          else "a name is required")
    if not vcpus.isdigit() or not 1 <= int(vcpus) <= MAX_VCPUS:
        errors["vcpus"] = f"a whole number from 1 to {MAX_VCPUS}"
    if not memory.isdigit() or not 64 <= int(memory) <= MAX_MEMORY_MIB:
        errors["memory"] = f"MiB, from 64 to {MAX_MEMORY_MIB}"
    if values is not None:
        errors |= _check_extras(values)
    return errors


def _check_extras(values: FormValues) -> dict[str, str]:
    errors: dict[str, str] = {}
    if values.disk:
        if not values.os_image:
            errors["disk"] = "only an OS image (e.g. debian-12) has a disk"
        else:
            try:
                parse_size(values.disk)
            except ValueError as exc:
                errors["disk"] = str(exc)
    if (problem := mount_error(values.mounts)) is not None:
        errors["mounts"] = problem
    if (problem := port_error(values.ports)) is not None:
        errors["ports"] = problem
    return errors


class NewMachineScreen(ModalScreen[NewMachine | None]):
    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, taken: set[str], home: Path | None = None,
                 images: ImagesLoader | None = None) -> None:
        super().__init__()
        self.taken = taken
        self.home = home
        self.load_images = images
        self.templates: dict[str, TemplateChoice] = {}
        self.images: dict[str, ImageListing] = {}

    async def on_mount(self) -> None:
        options = list(IMAGES)
        if self.load_images is not None:
            try:
                found = await self.load_images()
            except (BoxuiError, OSError) as exc:
                self.notify(f"could not list the images: {exc}", severity="warning")
                found = []
            self.images = {image.name: image for image in found}
            options += [(image_label(i), i.name) for i in found if i.kind != "default"]
        if self.home is not None:
            choices = await asyncio.to_thread(template_choices, self.home)
            self.templates = {choice.value: choice for choice in choices}
            options += [(c.label, c.value) for c in choices]
        if len(options) > 1:
            self.query_one("#image", Select).set_options(options)
            self.query_one("#image", Select).value = DEFAULT_NAME

    def _os_image(self) -> ImageListing | None:
        image = self.images.get(str(self.query_one("#image", Select).value))
        return image if image is not None and image.kind == "rootfs" else None

    @on(Select.Changed, "#image")
    def _image_changed(self, event: Select.Changed) -> None:
        choice = self.templates.get(str(event.value))
        if choice is not None:  # a snapshot restores only at the size it was taken at
            self.query_one("#vcpus", Input).value = str(choice.vcpus)
            self.query_one("#memory", Input).value = str(choice.memory_mib)
        disk = self.query_one("#disk", Input)
        disk.disabled = self._os_image() is None
        if disk.disabled:
            disk.value = ""
        self._show(check_fields(*self._values(), self.taken, self._extras()), {"disk"})

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="new-machine"):
            yield Static("[b]New machine[/b]", classes="dialog-title")
            yield Label("Name")
            yield Input(placeholder="e.g. build-1", id="name")
            yield Static("", id="name-error", classes="field-error")
            with Horizontal(classes="row"):
                with Vertical():
                    yield Label("vCPUs")
                    yield Input("1", id="vcpus")
                    yield Static("", id="vcpus-error", classes="field-error")
                with Vertical():
                    yield Label("Memory (MiB)")
                    yield Input("256", id="memory")
                    yield Static("", id="memory-error", classes="field-error")
            with Horizontal(classes="row"):
                with Vertical(classes="wide"):
                    yield Label("Image")
                    yield Select(IMAGES, value=DEFAULT_NAME, allow_blank=False, id="image")
                with Vertical():
                    yield Label("Disk (OS image)")
                    yield Input(placeholder="image's size", id="disk", disabled=True)
                    yield Static("", id="disk-error", classes="field-error")
            yield Label(r"Mounts  [dim]HOST_DIR\[:GUEST_DIR]\[:ro] ...[/dim]")
            yield Input(placeholder="e.g. ~/src:/src", id="mounts")
            yield Static("", id="mounts-error", classes="field-error")
            yield Label(r"Ports  [dim]\[HOST:]GUEST\[/udp] ...[/dim]")
            yield Input(placeholder="e.g. 8080:80 5353/udp", id="ports")
            yield Static("", id="ports-error", classes="field-error")
            with Horizontal(classes="buttons"):
                yield Button("Create and start", variant="primary", id="create")
                yield Button("Cancel", id="cancel")

    def _text(self, field_id: str) -> str:
        return self.query_one(f"#{field_id}", Input).value.strip()

    def _values(self) -> tuple[str, str, str]:
        return self._text("name"), self._text("vcpus"), self._text("memory")

    def _extras(self) -> FormValues:
        return FormValues(*self._values(), disk=self._text("disk"),
                          mounts=self._text("mounts"), ports=self._text("ports"),
                          os_image=self._os_image() is not None)

    def _show(self, errors: dict[str, str], touched: set[str] | None = None) -> None:
        for field_id in FIELDS:
            if touched is not None and field_id not in touched:
                continue
            widget = self.query_one(f"#{field_id}-error", Static)
            widget.update(Text(errors.get(field_id, "")))  # never markup: errors quote input
            self.query_one(f"#{field_id}", Input).set_class(field_id in errors, "-invalid")

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        self._show(check_fields(*self._values(), self.taken, self._extras()),
                   {event.input.id or ""})

    @on(Input.Submitted)
    @on(Button.Pressed, "#create")
    def _submit(self) -> None:
        values = self._extras()
        errors = check_fields(*self._values(), self.taken, values)
        self._show(errors)
        if errors:
            return
        spec = MachineSpec(name=values.name, vcpus=int(values.vcpus),
                           memory_mib=int(values.memory))
        choice = self.templates.get(str(self.query_one("#image", Select).value))
        if choice is not None:
            spec = spec.model_copy(update={"template": choice.ref, "cmdline": choice.boot_args,
                                           "template_revision": choice.revision})
        image = self._os_image()
        if image is not None:
            try:
                spec = MachineSpec.model_validate({**spec.model_dump(), "image": image.name,
                                                   "disk": values.disk or None})
            except ValueError as exc:  # pydantic's error is a ValueError
                self._show({"disk": " ".join(str(exc).split())[:120]}, {"disk"})
                return
        self.dismiss(NewMachine(spec, split_entries(values.mounts), split_entries(values.ports),
                                build_image=None if image is None or image.built
                                else image.name))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
