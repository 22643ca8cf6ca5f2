"""`?`: the keys that act here and now, grouped by where they act.

Read from the screen's active bindings (the focus chain, after `ui.toml`'s keymap and
after the app's `check_action`), so a rebound key shows as the user bound it and a key
that would do nothing here is not listed. Textual puts generic bindings on every
scrollable widget (`ctrl+pageup` scrolls a page sideways, `left` scrolls left): those are
kept only while the widget can actually scroll that way, and Textual's clipboard and
"how do I quit" keys are left out. The `:` commands follow, the same everywhere.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.keys import _character_to_key
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Static

#: `question_mark` -> `?`: keys shown as typed
_KEY_CHARACTERS = {_character_to_key(chr(c)): chr(c) for c in range(33, 127)}
#: Textual's keys that do nothing boxui means here: copy a mouse selection, a hint on
#: how to quit, and a data table's enter (no view acts on a selected row)
_NOISE = {("", "copy_text"), ("", "help_quit"), ("DataTable", "select_cursor")}
_VERTICAL = {"scroll_up", "scroll_down", "page_up", "page_down", "scroll_home",
             "scroll_end", "scroll_top", "scroll_bottom"}
_HORIZONTAL = {"scroll_left", "scroll_right", "page_left", "page_right"}
_ROW_SIDEWAYS = {"cursor_left", "cursor_right", "scroll_home", "scroll_end"}
#: clearer words for Textual's own descriptions: (widget class or "", action) -> words
_WORDS = {("", "focus_next"): "Next pane", ("", "focus_previous"): "Previous pane",
          ("", "command_palette"): "Command palette",
          ("EventStream", "select"): "The event whole, as JSON"}
#: group titles for focused widgets, by class
_WIDGETS = {"MachineTable": "the machines table", "EventStream": "the events pane",
            "ConsolePane": "the console pane", "TimelineView": "the timeline",
            "DataTable": "the table", "Tree": "the tree", "CommandLine": "the command line"}

#: the groups' order: what this screen is for first, the focused pane's moves last
MAIN, VIEW, EVERYWHERE, FOCUSED = range(4)


@dataclass
class KeyGroup:
    title: str
    keys: list[tuple[str, str]] = field(default_factory=list)  # (keys as typed, what)


def _classes(node: DOMNode) -> list[str]:
    return [cls.__name__ for cls in type(node).__mro__]


def _can_scroll(node: DOMNode, name: str) -> bool:
    """Scrolling acts only when there is somewhere to scroll: sideways whoever
    implements it (a row-cursor table's left/right/home/end scroll sideways too), up and
    down when it is Textual's generic scrolling (a table's own moves its cursor)."""
    if not isinstance(node, Widget):
        return True
    row_table = "DataTable" in _classes(node) and getattr(node, "cursor_type", "") == "row"
    if name in _HORIZONTAL or (row_table and name in _ROW_SIDEWAYS):
        return node.max_scroll_x > 0
    generic = getattr(type(node), f"action_{name}", None) is getattr(Widget, f"action_{name}",
                                                                      None)
    return node.max_scroll_y > 0 if name in _VERTICAL and generic else True


def _acts(node: DOMNode, binding: Binding) -> bool:
    name = binding.action.rpartition(".")[2].partition("(")[0]
    classes = _classes(node)
    if ("", name) in _NOISE or any((c, name) in _NOISE for c in classes):
        return False
    if name in ("focus_next", "focus_previous") and isinstance(node, Screen):
        return len(node.focus_chain) > 1  # somewhere else to go
    return _can_scroll(node, name)


def _words(node: DOMNode, binding: Binding) -> str:
    name = binding.action.rpartition(".")[2].partition("(")[0]
    for cls in ["", *_classes(node)]:
        if (cls, name) in _WORDS:
            return _WORDS[cls, name]
    return binding.description or name


def _where(node: DOMNode, screen: Screen[object], global_actions: Collection[str],
           action: str) -> tuple[int, str]:
    """(rank, title) of the group a binding belongs to."""
    if node is screen.app:
        return (EVERYWHERE, "everywhere") if action in global_actions else \
            (MAIN, "machines (the main screen)")
    if node is screen:
        if type(screen) is Screen:
            return VIEW, "between the panes"
        view = getattr(screen, "VIEW", "") or type(screen).__name__.removesuffix("Screen")
        return VIEW, f"this view: {view.lower()}"
    title = next((_WIDGETS[c] for c in _classes(node) if c in _WIDGETS),
                 type(node).__name__)
    return FOCUSED, f"{title} (has the focus)"


def grouped_keys(screen: Screen[object], order: Sequence[str],
                 global_actions: Collection[str]) -> list[KeyGroup]:
    """Each action once per group with every key bound to it now. `order`: the app's
    actions in the order its bindings list them (a keymap moves a rebound one to the
    end); `global_actions`: those that act on every screen, the rest of the app's act
    on the main screen only."""
    entries: dict[tuple[int, str], dict[str, tuple[str, list[str]]]] = {}
    for active in screen.active_bindings.values():
        node, binding = active.node, active.binding
        if not active.enabled or binding.system or not _acts(node, binding):
            continue
        action = binding.action.rpartition(".")[2] if node is screen.app else binding.action
        group = entries.setdefault(_where(node, screen, global_actions, action), {})
        _, keys = group.setdefault(_words(node, binding), (action, []))
        key = _KEY_CHARACTERS.get(binding.key, binding.key)
        if key not in keys:
            keys.append(key)
    position = {action: i for i, action in enumerate(order)}
    groups = []
    for (_, title), group in sorted(entries.items(), key=lambda item: item[0][0]):
        listed = sorted(group.items(), key=lambda item: position.get(item[1][0], len(order)))
        groups.append(KeyGroup(title, [(" / ".join(keys), what)
                                       for what, (_, keys) in listed]))
    return groups


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def _group_text(groups: list[KeyGroup], width: int) -> str:
    parts = []
    for group in groups:
        parts.append(f"[b]{_escape(group.title)}[/b]")
        parts += [f"  [b]{_escape(key):<{width}}[/b]  {_escape(what)}"
                  for key, what in group.keys]
        parts.append("")
    return "\n".join(parts).rstrip()


def _commands_text(commands: list[tuple[str, str]], width: int) -> str:
    rows = [f"  [b]:{_escape(word):<{width - 1}}[/b]  {_escape(what)}"
            for word, what in commands]
    return ("[b]commands[/b] (`:`, tab completes, up/down: history)\n\n" + "\n".join(rows)
            + "\n\n[dim]esc or ? closes[/dim]")


def columns(groups: list[KeyGroup]) -> tuple[list[KeyGroup], list[KeyGroup]]:
    """The first group (the main screen's or the view's keys) on the left, the rest on
    the right, so the usual case fits without scrolling."""
    return groups[:1], groups[1:]


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen .help-columns { height: auto; }
    HelpScreen .help-column { width: 1fr; height: auto; }
    HelpScreen #help-commands { margin-top: 1; }
    """
    BINDINGS = [("escape", "close", "Close"), ("question_mark", "close", "Close"),
                ("q", "close", "Close")]

    def __init__(self, groups: list[KeyGroup] | None = None,
                 commands: list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.groups, self.commands = groups or [], commands or []
        #: every (keys, what) shown, whatever its group
        self.keys = [pair for group in self.groups for pair in group.keys]

    def compose(self) -> ComposeResult:
        width = min(max((len(k) for k, _ in self.keys), default=8), 14)
        words = min(max((len(w) + 1 for w, _ in self.commands), default=8), 24)
        left, right = columns(self.groups)
        with Vertical(id="dialog", classes="help"), VerticalScroll():
            with Horizontal(classes="help-columns"):
                yield Static("[b]the keys that act here[/b], as bound now (ui.toml "
                             "\\[keys] rebinds them)\n\n" + _group_text(left, width),
                             classes="help-column")
                yield Static(_group_text(right, width), classes="help-column")
            yield Static(_commands_text(self.commands, words), id="help-commands")

    def action_close(self) -> None:
        self.dismiss(None)
