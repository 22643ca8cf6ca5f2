"""Deleting a machine removes its files and keys: it asks first."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmDeleteScreen(ModalScreen[bool]):
    BINDINGS = [("escape", "cancel", "Cancel"), ("y", "confirm", "Delete"),
                ("n", "cancel", "Keep")]

    def __init__(self, name: str, running: bool) -> None:
        super().__init__()
        self.machine = name
        self.running = running

    def compose(self) -> ComposeResult:
        warning = " It is running and will be killed first." if self.running else ""
        with Vertical(id="dialog"):
            yield Static(f"[b]Delete {self.machine}?[/b]", classes="dialog-title")
            yield Static(f"Its disk state, console log and SSH keys are removed.{warning} "
                         "This cannot be undone.")
            with Horizontal(classes="buttons"):
                yield Button("Delete", variant="error", id="delete")
                yield Button("Keep", id="keep")

    @on(Button.Pressed, "#delete")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#keep")
    def action_cancel(self) -> None:
        self.dismiss(False)
