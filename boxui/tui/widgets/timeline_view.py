"""The lifecycle timeline as a line-API widget: one row of cells per machine, each cell
the machine's state at that moment in the theme's state colour, with marks on top.

Drawn with Rich segments from precomputed strips (rebuilt only when the data, the view
or the size changes), not from a widget per lane or per span, so a long history and
many lanes cost one pass over the visible cells, not a layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from boxui.tui.timeline_model import MARK_GLYPHS, Lane, Mark, Timeline

NAME_WIDTH = 18
HEADER_ROWS = 2
#: seconds per cell, finest first; zooming steps through these
ZOOMS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
                            1800, 3600, 7200, 21600, 43200, 86400)
#: ticks land on round times: the smallest step at least this many cells apart
TICK_CELLS = 12
TICK_STEPS: tuple[float, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
                                 3600, 7200, 10800, 21600, 43200, 86400)

#: a glyph per state as well as a colour, so the lanes read without colour (NO_COLOR)
GLYPHS: dict[str, str] = {
    "ready": "█", "busy": "█", "creating": "▒", "booting": "▒", "draining": "▒",
    "stopping": "▒", "stopped": "─", "failed": "▓", "crashed": "▓", "broken": "▓",
    "unresponsive": "▚", "unhealthy": "▚",
}
MARK_STATES: dict[str, str] = {"crash": "crashed", "fail": "failed", "restart": "booting",
                               "adopt": "ready", "scale": "busy"}

StateColour = Callable[[str], str]


class TimelineView(Widget, can_focus=True):
    """Scrolls (left/right, home/end, wheel) and zooms (+/-, ctrl+wheel) in time; up/down
    scroll the lanes. Until scrolled back it follows now."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("plus,equals_sign", "zoom(-1)", "Zoom in"),
        Binding("minus", "zoom(1)", "Zoom out"),
        Binding("left", "pan(-1)", "Earlier"),
        Binding("right", "pan(1)", "Later"),
        Binding("home", "to_start", "Start"),
        Binding("end", "to_end", "Now"),
        Binding("up", "lanes(-1)", "Lanes up", show=False),
        Binding("down", "lanes(1)", "Lanes down", show=False),
    ]

    DEFAULT_CSS = """
    TimelineView { height: 1fr; }
    """

    def __init__(self, timeline: Timeline, colour: StateColour, *,
                 clock: Callable[[], float] = time.time, id: str | None = None) -> None:
        super().__init__(id=id)
        self.timeline = timeline
        self.colour = colour
        self.clock = clock
        self.zoom_index: int | None = None  # None: fit the whole history at next draw
        self.zoomed = False
        self.right: float | None = None  # None: follow now
        self.top = 0
        self._lines: list[Strip] | None = None
        self._built_for: tuple[int, int] = (0, 0)

    # --- the view --------------------------------------------------------------------

    @property
    def seconds_per_cell(self) -> float:
        return ZOOMS[self._zoom()]

    @property
    def cells(self) -> int:
        return max(1, self.size.width - NAME_WIDTH)

    @property
    def now(self) -> float:
        return max(self.clock(), self.timeline.end)

    def window(self) -> tuple[float, float]:
        """The times at the left and right edges of the lanes."""
        right = self.now if self.right is None else self.right
        return right - self.cells * self.seconds_per_cell, right

    def _zoom(self) -> int:
        if self.zoom_index is None:
            if self.size.width <= NAME_WIDTH:
                return ZOOMS.index(1)
            span = max(self.now - self.timeline.start, 1.0)
            fits = [i for i, z in enumerate(ZOOMS) if span / z <= self.cells * 0.9]
            self.zoom_index = fits[0] if fits else len(ZOOMS) - 1
        return self.zoom_index

    def set_timeline(self, timeline: Timeline) -> None:
        """Until a user zooms, the zoom fits the whole history, as it grows."""
        self.timeline = timeline
        if not self.zoomed:
            self.zoom_index = None
        self.changed()

    def changed(self) -> None:
        self._lines = None
        self.refresh()

    def tick(self) -> None:
        """Time went on: redraw when following now (else nothing moved)."""
        if self.right is None:
            self.changed()

    # --- keys and mouse --------------------------------------------------------------

    def action_zoom(self, step: int) -> None:
        """Zoom about the window's centre (about now while following)."""
        left, right = self.window()
        centre = (left + right) / 2
        self.zoom_index = min(max(self._zoom() + step, 0), len(ZOOMS) - 1)
        self.zoomed = True
        if self.right is not None:
            self.right = centre + self.cells * self.seconds_per_cell / 2
            self._clamp()
        self.changed()

    def action_pan(self, direction: int) -> None:
        right = self.window()[1]
        self.right = right + direction * max(1, self.cells // 4) * self.seconds_per_cell
        self._clamp()
        self.changed()

    def action_to_start(self) -> None:
        self.right = self.timeline.start + self.cells * self.seconds_per_cell * 0.95
        self._clamp()
        self.changed()

    def action_to_end(self) -> None:
        self.right = None
        self.changed()

    def action_lanes(self, step: int) -> None:
        rows = max(1, self.size.height - HEADER_ROWS)
        self.top = min(max(self.top + step, 0), max(0, len(self.timeline.lanes) - rows))
        self.changed()

    def _clamp(self) -> None:
        """Never past now (that is following), never wholly before the first event."""
        if self.right is None:
            return
        if self.right >= self.now:
            self.right = None
        else:
            self.right = max(self.right, self.timeline.start + self.seconds_per_cell)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.action_zoom(-1) if event.ctrl else self.action_pan(-1)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.action_zoom(1) if event.ctrl else self.action_pan(1)

    def on_resize(self, _: events.Resize) -> None:
        self.changed()

    # --- drawing ---------------------------------------------------------------------

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return HEADER_ROWS + len(self.timeline.lanes)

    def render_line(self, y: int) -> Strip:
        size = (self.size.width, self.size.height)
        if self._lines is None or self._built_for != size:
            self._lines = self._build()
            self._built_for = size
        return self._lines[y] if y < len(self._lines) else Strip.blank(self.size.width)

    def _build(self) -> list[Strip]:
        left, _right = self.window()
        spc = self.seconds_per_cell
        width = self.size.width
        rows = max(0, self.size.height - HEADER_ROWS)
        lines = [*self._axis(left, spc, width)]
        for lane in self.timeline.lanes[self.top:self.top + rows]:
            lines.append(self._lane(lane, left, spc).adjust_cell_length(width))
        return lines

    def _axis(self, left: float, spc: float, width: int) -> tuple[Strip, Strip]:
        cells = self.cells
        step = next((s for s in TICK_STEPS if s / spc >= TICK_CELLS), TICK_STEPS[-1])
        labels = [" "] * cells
        ruler = ["─"] * cells
        tick = (left // step + 1) * step
        while (column := int((tick - left) / spc)) < cells:
            ruler[column] = "┬"
            text = time.strftime("%H:%M:%S" if step < 60 else "%H:%M", time.localtime(tick))
            if column + len(text) <= cells:
                labels[column:column + len(text)] = list(text)
            tick += step
        for mark in self.timeline.marks:
            column = int((mark.at - left) / spc)
            if 0 <= column < cells:
                ruler[column] = MARK_GLYPHS[mark.kind]
        dim = Style(dim=True)
        zoom = f"1 cell = {_duration(spc)}"
        label_strip = Strip([Segment(f"{zoom:<{NAME_WIDTH}}"[:NAME_WIDTH], dim),
                             Segment("".join(labels), dim)])
        scale = Style.parse(self.colour("busy") or "bold") + Style(bold=True)
        segments = [Segment(f"{'scale requests' if self.timeline.marks else '':<{NAME_WIDTH}}",
                            dim)]
        segments += [Segment(c, scale if c == MARK_GLYPHS["scale"] else dim) for c in ruler]
        return (label_strip.adjust_cell_length(width),
                Strip(Segment.simplify(segments)).adjust_cell_length(width))

    def _lane(self, lane: Lane, left: float, spc: float) -> Strip:
        now = self.now
        name = lane.name if len(lane.name) < NAME_WIDTH else lane.name[:NAME_WIDTH - 2] + "…"
        segments = [Segment(f"{name:<{NAME_WIDTH}}", Style(bold=True))]
        cells: list[tuple[str, Style]] = []
        for column in range(self.cells):
            moment = left + (column + 0.5) * spc
            state = lane.state_at(moment) if moment <= now + spc / 2 else None
            if state is None:
                cells.append((" ", Style()))
            else:
                cells.append((GLYPHS.get(state, "█"), self._style(state)))
        for mark in lane.marks:
            column = int((mark.at - left) / spc)
            if 0 <= column < len(cells):
                cells[column] = (MARK_GLYPHS[mark.kind], self._mark_style(mark))
        segments += [Segment(text, style) for text, style in cells]
        return Strip(Segment.simplify(segments))

    def _style(self, state: str) -> Style:
        colour = self.colour(state)
        return Style.parse(colour) if colour else Style()

    def _mark_style(self, mark: Mark) -> Style:
        return self._style(MARK_STATES[mark.kind]) + Style(bold=True, reverse=True)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"
