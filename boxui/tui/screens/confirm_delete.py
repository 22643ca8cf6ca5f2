"""Deleting a machine removes its files and keys: it asks first, naming the size of its
disk when it has one (a build host's disk can hold days of work)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from backend.state.disk_size import format_size
from backend.supervision.machine_disk import DiskUsage


class ConfirmDeleteScreen(ModalScreen[bool]):
    BINDINGS = [("escape", "cancel", "Cancel"), ("y", "confirm", "Delete"),
                ("n", "cancel", "Keep")]

    def __init__(self, name: str, running: bool, disk: DiskUsage | None = None) -> None:
        super().__init__()
        self.machine = name
        self.running = running
        self.disk = disk

    def compose(self) -> ComposeResult:
        warning = " It is running and will be killed first." if self.running else ""
        with Vertical(id="dialog"):
            yield Static(f"[b]Delete {self.machine}?[/b]", classes="dialog-title")
            yield Static(f"{self._what_goes()}{warning} This cannot be undone.")
            with Horizontal(classes="buttons"):
                yield Button("Delete", variant="error", id="delete")
                yield Button("Keep", id="keep")

    def _what_goes(self) -> str:
        if self.disk is None:
            return "Its disk state, console log and SSH keys are removed."
        return (f"[b]Its disk ({format_size(self.disk.allocated_bytes)} used of "
                f"{format_size(self.disk.virtual_bytes)}) is deleted[/b], with its console "
                "log and SSH keys.")

    @on(Button.Pressed, "#delete")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#keep")
    def action_cancel(self) -> None:
        self.dismiss(False)
