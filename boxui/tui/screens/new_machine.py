"""The new-machine form: every field is checked as you type, errors shown inline, and
nothing is submitted until the whole form is valid. The image choice also lists the
state dir's templates (read off the UI thread); picking one fills in the size its
snapshot needs, and the machine restores from it when started."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from backend.errors import BoxuiError
from backend.state.machine_spec import MAX_MEMORY_MIB, MAX_VCPUS, MachineSpec
from backend.state.names import validate_name
from backend.templates.choices import TemplateChoice, template_choices

IMAGES = [("default (busybox + dropbear)", "default")]


def check_fields(name: str, vcpus: str, memory: str, taken: set[str]) -> dict[str, str]:
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
    return errors


class NewMachineScreen(ModalScreen[MachineSpec | None]):
    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, taken: set[str], home: Path | None = None) -> None:
        super().__init__()
        self.taken = taken
        self.home = home
        self.templates: dict[str, TemplateChoice] = {}

    async def on_mount(self) -> None:
        if self.home is None:
            return
        found = await asyncio.to_thread(template_choices, self.home)
        self.templates = {choice.value: choice for choice in found}
        if found:
            self.query_one("#image", Select).set_options(
                IMAGES + [(c.label, c.value) for c in found])

    @on(Select.Changed, "#image")
    def _image_changed(self, event: Select.Changed) -> None:
        choice = self.templates.get(str(event.value))
        if choice is not None:  # a snapshot restores only at the size it was taken at
            self.query_one("#vcpus", Input).value = str(choice.vcpus)
            self.query_one("#memory", Input).value = str(choice.memory_mib)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
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
            yield Label("Image")
            yield Select(IMAGES, value="default", allow_blank=False, id="image")
            with Horizontal(classes="buttons"):
                yield Button("Create and start", variant="primary", id="create")
                yield Button("Cancel", id="cancel")

    def _values(self) -> tuple[str, str, str]:
        return (self.query_one("#name", Input).value.strip(),
                self.query_one("#vcpus", Input).value.strip(),
                self.query_one("#memory", Input).value.strip())

    def _show(self, errors: dict[str, str], touched: set[str] | None = None) -> None:
        for field in ("name", "vcpus", "memory"):
            if touched is not None and field not in touched:
                continue
            widget = self.query_one(f"#{field}-error", Static)
            widget.update(errors.get(field, ""))
            self.query_one(f"#{field}", Input).set_class(field in errors, "-invalid")

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        field = event.input.id or ""
        self._show(check_fields(*self._values(), self.taken), {field})

    @on(Input.Submitted)
    @on(Button.Pressed, "#create")
    def _submit(self) -> None:
        name, vcpus, memory = self._values()
        errors = check_fields(name, vcpus, memory, self.taken)
        self._show(errors)
        if errors:
            return
        spec = MachineSpec(name=name, vcpus=int(vcpus), memory_mib=int(memory))
        choice = self.templates.get(str(self.query_one("#image", Select).value))
        if choice is not None:
            spec = spec.model_copy(update={"template": choice.ref, "cmdline": choice.boot_args,
                                           "template_revision": choice.revision})
        self.dismiss(spec)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
