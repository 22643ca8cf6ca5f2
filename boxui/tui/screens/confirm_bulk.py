"""One confirmation for an action on every marked machine, naming each of them: a bulk
stop or delete is easy to set off by a stray `space`, so the list is the point."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

#: names listed one per line up to this many; the rest are counted
SHOWN = 12
WHAT = {"start": "Start", "stop": "Stop", "restart": "Restart", "delete": "Delete"}


def bulk_text(verb: str, names: list[str], running: set[str]) -> str:
    killed = "  (running: killed first)"
    lines = [f"  {name}{killed if verb == 'delete' and name in running else ''}"
             for name in names[:SHOWN]]
    if len(names) > SHOWN:
        lines.append(f"  … and {len(names) - SHOWN} more")
    tail = ("\n\nTheir disks, console logs and SSH keys are removed. This cannot be undone."
            if verb == "delete" else "")
    return "\n".join(lines) + tail


class ConfirmBulkScreen(ModalScreen[bool]):
    BINDINGS = [("escape", "cancel", "Cancel"), ("y", "confirm", "Yes"),
                ("n", "cancel", "No")]

    def __init__(self, verb: str, names: list[str], running: set[str] | None = None) -> None:
        super().__init__()
        self.verb, self.names, self.running = verb, names, running or set()

    def compose(self) -> ComposeResult:
        what = WHAT.get(self.verb, self.verb.capitalize())
        plural = "" if len(self.names) == 1 else "s"
        with Vertical(id="dialog"):
            yield Static(f"[b]{what} {len(self.names)} marked machine{plural}?[/b]",
                         classes="dialog-title")
            yield Static(bulk_text(self.verb, self.names, self.running), markup=False)
            with Horizontal(classes="buttons"):
                yield Button(what, variant="error" if self.verb == "delete" else "primary",
                             id="yes")
                yield Button("Cancel", id="no")

    @on(Button.Pressed, "#yes")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_cancel(self) -> None:
        self.dismiss(False)
