"""`/` on a full-screen view: the same filter bar and the same rules (plain, `!`, `~`)
as the main screen, remembered per view for the session in a dict the app owns, so
leaving a view and coming back keeps what was typed."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Input

from boxui.tui.text_filter import TextFilter


class FilterBar(Input):
    DEFAULT_CSS = """
    FilterBar { display: none; height: 3; border: tall $accent; }
    FilterBar.-shown { display: block; }
    """

    def __init__(self) -> None:
        # disabled while hidden: a screen focuses its first enabled widget on mount
        super().__init__(placeholder="filter: text, !text (not), ~regex", id="filter-bar",
                         disabled=True)


class FilteredScreen(Screen[None]):
    """A view with a filter: subclasses name their `VIEW` and redraw in `refilter`."""

    VIEW: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("escape", "back", "Back"),
        Binding("q", "close", "Back"),
    ]

    def __init__(self, filters: dict[str, str] | None = None) -> None:
        super().__init__()
        self.filters = filters if filters is not None else {}

    @property
    def filter(self) -> TextFilter:
        return TextFilter.parse(self.filters.get(self.VIEW, ""))

    def refilter(self) -> None:
        """Redraw with `self.filter` applied."""

    def action_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.value = self.filters.get(self.VIEW, "")
        bar.disabled = False
        bar.add_class("-shown")
        bar.focus()

    @on(Input.Changed, "#filter-bar")
    def _changed(self, event: Input.Changed) -> None:
        self.filters[self.VIEW] = event.value
        problem = TextFilter.parse(event.value).error
        event.input.set_class(problem is not None, "-invalid")
        self.refilter()

    @on(Input.Submitted, "#filter-bar")
    def _submitted(self) -> None:
        """enter keeps the filter (the view's title shows it) and puts the bar away."""
        bar = self.query_one(FilterBar)
        bar.remove_class("-shown")
        bar.disabled = True
        self.focus_next()

    def action_back(self) -> None:
        """escape: out of the filter bar first (clearing the filter), then out of the
        view."""
        bar = self.query_one(FilterBar)
        if bar.has_class("-shown"):
            bar.value = ""
            bar.remove_class("-shown")
            bar.disabled = True
            self.focus_next()
            return
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
