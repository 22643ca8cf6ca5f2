"""`c`: copy a file or directory into the selected machine or out of it, as `boxui cp`
does (over SSH to the guest's SFTP server), with a progress bar per file. The dialog
stays open when a copy ends or fails, saying which, so the next copy is a path away."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, ProgressBar, Select, Static

from backend.errors import BoxuiError
from backend.supervision.file_copy import Progress

#: copy(source, target, recursive, progress): `NAME:PATH` on one side
CopyFn = Callable[[str, str, bool, Progress], Awaitable[None]]


def endpoints(name: str, direction: str, host_path: str, guest_path: str) -> tuple[str, str]:
    guest = f"{name}:{guest_path}"
    return (host_path, guest) if direction == "in" else (guest, host_path)


class CopyScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, name: str, copy: CopyFn) -> None:
        super().__init__()
        self.machine, self._copy = name, copy
        self.copied: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        name = self.machine
        with Vertical(id="dialog", classes="copy"):
            yield Static(f"[b]Copy files: {name}[/b]", classes="dialog-title")
            yield Select([(f"into {name} (host -> guest)", "in"),
                          (f"out of {name} (guest -> host)", "out")],
                         value="in", allow_blank=False, id="direction")
            yield Input(placeholder="host path, e.g. ./build.tar", id="host-path")
            yield Input(placeholder="guest path, e.g. /root/", id="guest-path")
            yield Checkbox("recursive (directories)", id="recursive")
            # a total from the start: an indeterminate bar animates while nothing copies
            yield ProgressBar(total=1, show_eta=False, id="copy-progress")
            yield Static("", id="copy-status")
            with Horizontal(classes="buttons"):
                yield Button("Copy", variant="primary", id="copy")
                yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.query_one("#host-path", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#copy")
    def start_copy(self) -> None:
        host = self.query_one("#host-path", Input).value.strip()
        guest = self.query_one("#guest-path", Input).value.strip()
        if not host or not guest:
            self._status("[b]both paths are needed[/b]", error=True)
            return
        direction = str(self.query_one("#direction", Select).value)
        source, target = endpoints(self.machine, direction, host, guest)
        self._run(source, target, self.query_one("#recursive", Checkbox).value)

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#copy-status", Static)
        status.set_class(error, "field-error")
        status.update(text)

    def _progress(self, path: str, done: int, total: int) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=max(total, 1), progress=done)
        self._status(f"{path.replace('[', chr(92) + '[')}: {done:,} of {total:,} bytes")

    @work(group="copy", exclusive=True, exit_on_error=False)
    async def _run(self, source: str, target: str, recursive: bool) -> None:
        self.query_one("#copy", Button).disabled = True
        self._status(f"copying {source} to {target}…".replace("[", r"\["))
        try:
            await self._copy(source, target, recursive, self._progress)
        except (BoxuiError, OSError) as exc:
            self._status(str(exc).replace("[", r"\["), error=True)
            return
        finally:
            self.query_one("#copy", Button).disabled = False
        self.copied.append((source, target))
        bar = self.query_one(ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        self._status(f"copied {source} to {target}".replace("[", r"\["))

    @on(Button.Pressed, "#close")
    def action_close(self) -> None:
        self.dismiss(None)
