"""The live table of machines, reconciled by row key.

Rows are added, updated or removed by key, never rebuilt, and only lines whose row
changed are redrawn. It is a Line-API widget rather than a `DataTable`: with 1,000
machines sampled every second, DataTable's table-wide cache invalidation and per-cell
Rich rendering made each frame cost ~100 ms, where composing a row's segments directly
and caching each row's strip costs a fraction of a millisecond. Columns have fixed
widths, so a changing value never re-lays out anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from backend.state.machine_store import LoadedMachine
from backend.supervision.health import HealthSample

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    numeric: bool = False  # right-aligned, sorted as a number


COLUMNS = (
    Column("name", "NAME", 18),
    Column("state", "STATE", 12),
    Column("image", "IMAGE", 12),
    Column("accel", "ACCEL", 5),
    Column("vcpus", "CPUS", 4, numeric=True),
    Column("memory", "MEMORY", 8, numeric=True),
    Column("cpu", "CPU %", 6, numeric=True),
    Column("guest_mem", "GUEST MEM", 10, numeric=True),
    Column("uptime", "UPTIME", 8, numeric=True),
    Column("ssh", "SSH", 6, numeric=True),
)
#: once any host beyond `local` is defined: HOST after NAME, and the columns whose values
#: are short in practice narrower, so that the table still fits the 108 cells it gets in a
#: 150-column terminal (the detail pane takes the rest). A longer value ends in `…`.
_NARROW = {"name": 15, "image": 9, "memory": 7, "cpu": 5, "guest_mem": 9, "uptime": 7}
HOST_COLUMN = Column("host", "HOST", 7)
HOST_COLUMNS = (
    Column("name", "NAME", _NARROW["name"]), HOST_COLUMN,
    *(Column(c.key, c.label, _NARROW.get(c.key, c.width), c.numeric) for c in COLUMNS[1:]),
)
CELL_PAD = 1
TABLE_WIDTH = sum(c.width + 2 * CELL_PAD for c in COLUMNS)

StateColour = Callable[[str], str]
Row = tuple[dict[str, str], str]  # (cells by column key, state)
#: a row as it is now (None: no such machine any more)
RowSource = Callable[[str], Row | None]


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    mib = value / (1 << 20)
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def human_age(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    # minutes once past the first one: a table of 1,000 rows should not redraw every row
    # every second just to tick a clock
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m"
    return f"{s}s"


def image_of(machine: LoadedMachine) -> str:
    """What the machine boots: an OS image, a template, a kernel of its own, or boxui's
    default guest."""
    spec = machine.spec
    if spec is None:
        return "-"
    if spec.image:
        return spec.image
    if spec.template:
        return spec.template
    return "own kernel" if spec.kernel else "default"


def row_cells(
    machine: LoadedMachine,
    sample: HealthSample | None,
    now: float,
    busy: str | None = None,
    frame: int = 0,
    host: str = "local",
) -> dict[str, str]:
    spec, record = machine.spec, machine.record
    state = machine.state.value
    running = state in ("booting", "ready", "busy", "draining", "stopping", "unresponsive",
                       "unhealthy")
    if busy:
        state = f"{SPINNER[frame % len(SPINNER)]} {busy}"
    uptime = None
    if running and record and record.started_at:
        uptime = now - record.started_at.timestamp()
    return {
        "name": machine.name,
        "state": state,
        "image": image_of(machine),
        "accel": (record.accel if record and record.accel else "-") if running else "-",
        "vcpus": str(spec.vcpus) if spec else "-",
        "memory": f"{spec.memory_mib}M" if spec else "-",
        "cpu": f"{sample.cpu_percent:.0f}" if running and sample and
        sample.cpu_percent is not None else "-",
        "guest_mem": human_bytes(sample.guest_used_bytes) if running and sample else "-",
        "uptime": human_age(uptime),
        "ssh": str(record.ssh_port) if running and record and record.ssh_port else "-",
        "host": host,
    }


class MachineTable(ScrollView, can_focus=True):
    """Shows machines; the app tells it what to show, it decides what to redraw.

    The header is line 0 of the viewport and does not scroll; row `i` is drawn on
    viewport line `i + 1 - scroll_y`. The cursor follows its machine across sorts.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "machine-table--header", "machine-table--cursor", "machine-table--marked",
    }
    DEFAULT_CSS = """
    MachineTable { background: $surface; color: $foreground; }
    MachineTable > .machine-table--header {
        background: $panel; color: $primary; text-style: bold;
    }
    MachineTable > .machine-table--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
    }
    MachineTable > .machine-table--marked { color: $accent; text-style: bold; }
    MachineTable:focus > .machine-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    """

    class Highlighted(Message):
        """The machine under the cursor changed (None: the table is empty)."""

        def __init__(self, name: str | None) -> None:
            super().__init__()
            self.name = name

    def __init__(self, state_colour: StateColour, *, row_source: RowSource | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._state_colour = state_colour
        self._row_source = row_source
        #: rows that changed while off screen: read from `row_source` when next drawn,
        #: sorted or read, not built every time their machine is sampled
        self._stale: set[str] = set()
        self._rows: dict[str, Row] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._cursor = 0
        self._posted: str | None = ""
        self._strips: dict[str, tuple[tuple[Row, bool, bool], Strip]] = {}
        #: the widget's Rich style ("") and its components', until the styles change
        self._styles: dict[str, Style] = {}
        #: rows marked with `space`: bulk actions act on them (in table order)
        self.marked: set[str] = set()
        self.sort_column: str = "name"
        self.sort_reverse = False
        self.updates = 0
        self.columns: tuple[Column, ...] = COLUMNS
        self._width = TABLE_WIDTH

    def show_hosts(self, shown: bool) -> None:
        """The HOST column, after NAME: shown when other hosts are defined."""
        self.columns = HOST_COLUMNS if shown else COLUMNS
        self._width = sum(c.width + 2 * CELL_PAD for c in self.columns)
        self._strips.clear()
        self.virtual_size = Size(self._width, len(self._order) + 1)
        self.refresh()

    # --- data ------------------------------------------------------------------------

    def reconcile(self, rows: Iterable[tuple[str, dict[str, str], str]]) -> None:
        """`rows` are (name, cells, state) for every machine that should be shown."""
        wanted: dict[str, Row] = {name: (cells, state) for name, cells, state in rows}
        selected = self.selected_name
        gone = [name for name in self._rows if name not in wanted]
        added = False
        for name in gone:
            del self._rows[name]
            self._strips.pop(name, None)  # a mark stays: a filter may show it again
        window = self._window()
        for name, row in wanted.items():
            old = self._rows.get(name)
            if old is None:
                added = True
            elif old != row:
                self._write(name, row, window)
                continue
            self._rows[name] = row
        self._stale.clear()  # every row kept was just given
        if gone or added:
            self._resort(selected)
        self._post_highlight()

    def update(self, rows: Iterable[tuple[str, dict[str, str], str]]) -> None:
        """Update rows already shown; the others are left as they are."""
        window = self._window()
        stored, stale = self._rows, self._stale
        for name, cells, state in rows:
            row = (cells, state)
            old = stored.get(name)
            stale.discard(name)
            if old is not None and old != row:
                self._write(name, row, window)

    def changed(self, names: Iterable[str]) -> list[str]:
        """Of these rows, whose machines changed, the ones on screen: the caller builds
        and `update`s those now. The others are only noted, and read from `row_source`
        when they are next drawn, sorted or read: with 1,000 machines sampled every
        second, building all their rows was most of the app's own work per round."""
        index = self._index
        if self._row_source is None:
            return [name for name in names if name in index]
        window, stale, shown = self._window(), self._stale, []
        for name in names:
            i = index.get(name)
            if i is None:
                continue
            if i in window:
                shown.append(name)
            else:
                stale.add(name)
        return shown

    def has_row(self, name: str) -> bool:
        return name in self._rows

    def _write(self, name: str, row: Row, window: range | None = None) -> None:
        """Store a changed row and redraw its line if it is on screen (`window`: the rows
        on screen, measured once by a caller that writes many)."""
        self._rows[name] = row
        self.updates += 1
        index = self._index[name]
        if index in (self._window() if window is None else window):
            self.refresh_line(index + 1)

    def _window(self) -> range:
        """The indices of the rows on screen. Measuring it walks the styles and the
        compositor's map: once per batch of rows, not once for each of 1,000 rows."""
        top = self.scroll_offset.y
        return range(top, top + self._page_rows())

    def _page_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _fresh(self, name: str) -> Row:
        """The row, read again from the source if it changed while off screen."""
        if name in self._stale:
            self._stale.discard(name)
            row = self._row_source(name) if self._row_source is not None else None
            if row is not None:
                self._rows[name] = row
        return self._rows[name]

    def _resort(self, keep: str | None) -> None:
        for name in list(self._stale):
            self._fresh(name)
        column = self.sort_column
        numeric = next((c.numeric for c in self.columns if c.key == column), False)

        def key(name: str) -> tuple[int, float, str, str]:
            text = self._rows[name][0][column]
            if numeric:
                number = _leading_number(text)
                return (0, number, name, "") if number is not None else (1, 0.0, name, "")
            return (0, 0.0, text, name)  # the key last: `web` before `web@build`

        self._order = sorted(self._rows, key=key, reverse=self.sort_reverse)
        self._index = {name: i for i, name in enumerate(self._order)}
        self.virtual_size = Size(self._width, len(self._order) + 1)
        if keep is not None and keep in self._index:
            self._cursor = self._index[keep]
        self._cursor = max(0, min(self._cursor, len(self._order) - 1))
        self._scroll_to_cursor()
        self.refresh()

    def sort_by(self, column: str) -> None:
        """Sort by `column`; the same column again reverses the order."""
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._resort(self.selected_name)

    def restyle(self) -> None:
        """Colours come from the theme: drop every cached line after a theme change."""
        self._styles.clear()
        self._strips.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        """The theme or a pseudo-class (:focus) changed the styles: what was drawn with
        the old ones goes."""
        self.restyle()
        super().notify_style_update()

    def _style(self, component: str = "") -> Style:
        """The widget's Rich style, or a component's, read once per change of styles:
        `rich_style` walks every ancestor's styles, and each line drawn asked for it."""
        style = self._styles.get(component)
        if style is None:
            style = self.get_component_rich_style(component) if component else \
                self.rich_style
            self._styles[component] = style
        return style

    def toggle_mark(self, name: str) -> None:
        if name in self.marked:
            self.marked.discard(name)
        elif name in self._rows:
            self.marked.add(name)
        if name in self._index:
            self.refresh_line(self._index[name] + 1)

    def clear_marks(self) -> None:
        self.marked.clear()
        self.refresh()

    @property
    def marked_names(self) -> list[str]:
        """The marked rows in the order they are shown (marked ones a filter hides are
        left out: a bulk action acts on what the user sees)."""
        return [name for name in self._order if name in self.marked]

    # --- reading -----------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def row_names(self) -> list[str]:
        return list(self._order)

    @property
    def selected_name(self) -> str | None:
        return self._order[self._cursor] if self._order else None

    def get_cell(self, name: str, column: str) -> str:
        return self._fresh(name)[0][column]

    # --- cursor ------------------------------------------------------------------------

    def _move_to(self, index: int) -> None:
        if not self._order:
            return
        index = max(0, min(index, len(self._order) - 1))
        if index != self._cursor:
            old, self._cursor = self._cursor, index
            self.refresh_line(old + 1)
            self.refresh_line(index + 1)
            self._scroll_to_cursor()
        self._post_highlight()

    def _scroll_to_cursor(self) -> None:
        top, page = self.scroll_offset.y, self._page_rows()
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, immediate=True)
        elif self._cursor >= top + page:
            self.scroll_to(y=self._cursor - page + 1, animate=False, immediate=True)

    def _post_highlight(self) -> None:
        name = self.selected_name
        if name != self._posted:
            self._posted = name
            self.post_message(self.Highlighted(name))

    def action_cursor(self, step: int) -> None:
        self._move_to(self._cursor + step)

    def action_page(self, direction: int) -> None:
        self._move_to(self._cursor + direction * self._page_rows())

    def action_first(self) -> None:
        self._move_to(0)

    def action_last(self) -> None:
        self._move_to(len(self._order) - 1)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = offset.x + self.scroll_offset.x
            for column in self.columns:
                x -= column.width + 2 * CELL_PAD
                if x < 0:
                    self.sort_by(column.key)
                    return
            return
        self._move_to(self.scroll_offset.y + offset.y - 1)

    def on_focus(self) -> None:
        self._refresh_cursor()

    def on_blur(self) -> None:
        self._refresh_cursor()

    def _refresh_cursor(self) -> None:
        if self._order:
            self._strips.pop(self._order[self._cursor], None)
            self.refresh_line(self._cursor + 1)

    # --- drawing -----------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self._style()
        if y == 0:
            strip = self._header_strip()
        else:
            index = scroll_y + y - 1
            if index >= len(self._order):
                return Strip.blank(width, base)
            strip = self._row_strip(self._order[index], index == self._cursor)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _header_strip(self) -> Strip:
        style = self._style() + self._style("machine-table--header")
        arrow = " ▼" if self.sort_reverse else " ▲"
        segments = []
        for column in self.columns:
            label = column.label + (arrow if column.key == self.sort_column else "")
            segments.append(Segment(_fit(label, column), style))
        return Strip(segments, self._width)

    def _row_strip(self, name: str, cursor: bool) -> Strip:
        row = self._fresh(name)
        marked = name in self.marked
        key = (row, cursor, marked)
        cached = self._strips.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        cells, state = row
        style = self._style()
        if marked:
            style += self._style("machine-table--marked")
        if cursor:
            style += self._style("machine-table--cursor")
        segments = []
        for column in self.columns:
            cell_style = style
            if column.key == "state" and not (cursor and self.has_focus):
                colour = self._state_colour(state)
                if colour:
                    cell_style = style + Style(color=colour)
            text = cells[column.key]
            if marked and column.key == "name":
                text = "+" + text  # k9s' mark: visible without colour too (NO_COLOR)
            segments.append(Segment(_fit(text, column), cell_style))
        strip = Strip(segments, self._width)
        self._strips[name] = (key, strip)
        return strip


def _fit(text: str, column: Column) -> str:
    """The cell's text padded (or cut) to the column's width, with its margins."""
    if cell_len(text) > column.width:
        text = set_cell_size(text, column.width - 1) + "…"
    pad = " " * CELL_PAD
    if column.numeric:
        return pad + " " * (column.width - cell_len(text)) + text + pad
    return pad + set_cell_size(text, column.width) + pad


_UNITS = {"": 1.0, "M": 1.0, "MiB": 1.0, "GiB": 1024.0,
          "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?) ?([A-Za-z]*)")


def _leading_number(text: str) -> float | None:
    """A cell's value as a number for sorting: "1.2 GiB" > "300 MiB", "1h02m" > "59m"."""
    parts = _QUANTITY.findall(text)
    if not parts or any(unit not in _UNITS for _, unit in parts):
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)
