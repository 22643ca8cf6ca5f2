"""`f`: a machine's port forwards, added and removed while it runs (no restart), through
the app's backend as `boxui port add/rm` goes through the API. A failure (a host port
taken, a forward that exists) is one line in the dialog, which stays open to fix it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from backend.errors import BoxuiError
from backend.state.port_forward_view import ForwardView
from backend.state.port_mapping import PortMapping, Protocol


def forward_text(view: ForwardView) -> str:
    host = view.live_host or view.host
    where = f"127.0.0.1:{host}" if host else "a free port at each start"
    live = "" if view.live_host else "  (not running)"
    return f"{where} -> {view.guest}/{view.protocol}{live}"


class PortsScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("delete,d", "remove", "Remove", show=False),
    ]

    def __init__(self, name: str, forwards: Callable[[], list[ForwardView]],
                 add: Callable[[PortMapping], Awaitable[ForwardView]],
                 remove: Callable[[int, Protocol], Awaitable[ForwardView]]) -> None:
        super().__init__()
        self.machine = name
        self._forwards, self._add, self._remove = forwards, add, remove
        self._shown: list[ForwardView] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="ports"):
            yield Static(f"[b]Port forwards of {self.machine}[/b]", classes="dialog-title")
            yield OptionList(id="forwards")
            yield Static(r"add \[HOST:]GUEST\[/udp], enter adds; d or delete removes the "
                         "highlighted one", classes="spark-label")
            yield Input(placeholder="8080:80", id="add-port")
            yield Static("", id="ports-error", classes="field-error")

    def on_mount(self) -> None:
        self.reload()
        self.query_one("#add-port", Input).focus()

    def reload(self) -> None:
        self._shown = self._forwards()
        options = self.query_one(OptionList)
        options.set_options(Option(forward_text(v)) for v in self._shown)
        if not self._shown:
            options.set_options([Option("no forwards yet", disabled=True)])

    def _error(self, text: str) -> None:
        self.query_one("#ports-error", Static).update(text.replace("[", r"\["))

    @on(Input.Submitted, "#add-port")
    def _submitted(self, event: Input.Submitted) -> None:
        try:
            mapping = PortMapping.parse(event.value.strip())
        except ValueError as exc:
            self._error(str(exc))
            return
        self._change(lambda: self._add(mapping), clear=True)

    def action_remove(self) -> None:
        index = self.query_one(OptionList).highlighted
        if index is None or index >= len(self._shown):
            self._error("highlight a forward first (tab to the list)")
            return
        view = self._shown[index]
        self._change(lambda: self._remove(view.guest, view.protocol), clear=False)

    @work(group="ports", exclusive=True, exit_on_error=False)
    async def _change(self, job: Callable[[], Awaitable[ForwardView]], clear: bool) -> None:
        try:
            await job()
        except BoxuiError as exc:
            self._error(str(exc))
            return
        self._error("")
        if clear:
            self.query_one("#add-port", Input).value = ""
        self.reload()

    def action_close(self) -> None:
        self.dismiss(None)
