"""The `:` command line, as in k9s: `:machines`, `:cells /failed`, `:start web db`,
`:rm old`, user aliases from `ui.toml`, with completion (`tab`) and history (up/down).

Views are a registry, not a list baked in here: a module that adds a view calls
`register_view` (name, what it shows, the app action that opens it), and the command
line, its completion and `:help` know it at once. Machine commands name the same app
actions as the keys, so `:stop web` goes through exactly what `x` does.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input

from backend.errors import BoxuiError


class CommandError(BoxuiError):
    code = "invalid_request"


@dataclass(frozen=True)
class View:
    name: str
    summary: str
    #: the app action that shows it (`services` runs `action_services`)
    action: str


#: every view the command line can open, by name; others append with `register_view`
VIEWS: dict[str, View] = {}


def register_view(name: str, summary: str, action: str) -> None:
    VIEWS[name] = View(name, summary, action)


for _name, _summary, _action in (
    ("machines", "every machine (the main screen)", "show_machines"),
    ("events", "the event stream (all machines)", "show_events"),
    ("services", "services with their instances", "services"),
    ("cells", "commands run in throwaway machines", "cells"),
    ("images", "OS images: built, recipes, used by", "images"),
    ("sessions", "open sessions: boxui's SSH and the guests' logged-in users", "sessions"),
    ("timeline", "the selected machine's life over time", "timeline"),
    ("help", "the keys in force", "help"),
):
    register_view(_name, _summary, _action)

#: machine commands: word -> (the app's verb, what it does)
MACHINE_COMMANDS: dict[str, tuple[str, str]] = {
    "start": ("start", "start machines"),
    "stop": ("stop", "stop machines"),
    "restart": ("restart", "restart machines"),
    "rm": ("delete", "delete machines (asks first)"),
    "delete": ("delete", "delete machines (asks first)"),
    "ssh": ("ssh", "SSH into a machine"),
    "logs": ("logs", "a machine's console, full screen"),
    "ports": ("ports", "a machine's port forwards"),
    "cp": ("copy", "copy a file in or out of a machine"),
    "mark": ("mark", "mark machines (space marks the row)"),
}
QUIT_WORDS = ("q", "quit")


@dataclass(frozen=True)
class Command:
    kind: str  # "view", "machine" or "quit"
    word: str  # the view name or the machine verb
    args: tuple[str, ...] = ()
    filter: str | None = None  # `:machines /db`: the view opens filtered


def expand_alias(text: str, aliases: Mapping[str, str]) -> str:
    """The first word replaced by its alias (once: aliases do not chain)."""
    word, _, rest = text.strip().partition(" ")
    if word in aliases:
        return f"{aliases[word]} {rest}".strip()
    return text.strip()


def parse_command(text: str, aliases: Mapping[str, str] = {}) -> Command:
    """What a submitted line asks for; `CommandError` names what is wrong."""
    line = expand_alias(text.removeprefix(":"), aliases)
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f":{line}: {exc}") from None
    if not words:
        raise CommandError("an empty command (try :help)")
    word, args = words[0], tuple(words[1:])
    if word in QUIT_WORDS:
        return Command("quit", word)
    if word in VIEWS:
        filters = [a for a in args if a.startswith("/")]
        if len(filters) != len(args):
            raise CommandError(f":{word} takes only a /filter")
        return Command("view", word, filter=filters[0][1:] if filters else None)
    if word in MACHINE_COMMANDS:
        verb = MACHINE_COMMANDS[word][0]
        return Command("machine", verb, args)
    raise CommandError(f":{word}: no such view or command (one of: "
                       f"{', '.join(sorted(words_known(aliases)))})")


def words_known(aliases: Mapping[str, str]) -> list[str]:
    return [*VIEWS, *MACHINE_COMMANDS, *QUIT_WORDS, *aliases]


def complete(text: str, aliases: Mapping[str, str], machines: Iterable[str]) -> str | None:
    """The whole line completed: the first word from views, commands and aliases, a
    later word from the machine names; None when nothing (or nothing more) fits."""
    if not text:
        return None
    head, sep, last = text.rpartition(" ")
    pool = sorted(machines) if sep else sorted(words_known(aliases), key=lambda w: (len(w), w))
    for candidate in pool:
        if candidate.startswith(last) and candidate != last:
            return f"{head}{sep}{candidate}"
    return None


class _Completer(Suggester):
    def __init__(self, words: Callable[[str], str | None]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self._words = words

    async def get_suggestion(self, value: str) -> str | None:
        return self._words(value)


class CommandLine(Input):
    """A one-line input at the bottom; the app shows it on `:`, runs what is submitted
    (the `Run` message) and hides it. The app hands it the saved history and saves it
    again after each `Run` (see `command_history`); up/down walk it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "Complete", show=False),
        Binding("up", "history(-1)", "Older", show=False),
        Binding("down", "history(1)", "Newer", show=False),
    ]

    class Run(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, completer: Callable[[str], str | None], *,
                 history: Iterable[str] = (), limit: int = 500,
                 id: str | None = None) -> None:
        super().__init__(placeholder=":machines  :start NAME  :help", id=id,
                         suggester=_Completer(completer), disabled=True)
        self.history: list[str] = list(history)[-limit:]
        self._limit = limit
        self._position = len(self.history)

    def action_complete(self) -> None:
        if self._suggestion:
            self.value = self._suggestion
            self.cursor_position = len(self.value)

    def rewind(self) -> None:
        """The next `up` starts from the newest command again."""
        self._position = len(self.history)

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self._position = max(0, min(len(self.history), self._position + step))
        self.value = self.history[self._position] if self._position < len(self.history) \
            else ""
        self.cursor_position = len(self.value)

    async def action_submit(self) -> None:
        text = self.value.strip()
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
            del self.history[:-self._limit]
        self._position = len(self.history)
        self.value = ""
        if text:
            self.post_message(self.Run(text))
