"""Open sessions per machine: the SSH sessions boxui itself opened (`S`: a tmux window,
or the app suspended) and the guest's own view of who is logged in (`who`, run through
the backend's exec like any command). Both matter: a tmux window outlives the key press,
and someone may be logged in from `ssh NAME.boxui` in another terminal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from backend.errors import BoxuiError
from boxui.tui.widgets.filter_bar import FilterBar, FilteredScreen

#: fixed widths: rows arrive machine by machine, and columns must not jump as they do
COLUMNS = (("MACHINE", 18), ("FROM", 8), ("USER", 12), ("WHERE", 26), ("SINCE", 17))
WHO_TIMEOUT = 10.0


@dataclass
class OpenSession:
    """One `S` the app started: `where` is `tmux window @3` or `suspended app`."""

    machine: str
    where: str
    started: datetime
    pid: int | None = None


def parse_who(output: str) -> list[tuple[str, str, str]]:
    """`who` lines as (user, terminal and origin, login time); busybox and GNU agree on
    the first two columns, the rest is kept as it is."""
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        origin = next((p for p in parts[2:] if p.startswith("(")), "")
        when = " ".join(p for p in parts[2:] if not p.startswith("("))
        rows.append((parts[0], f"{parts[1]} {origin}".strip(), when))
    return rows


#: who(machine) -> its `who` output; raises BoxuiError when it cannot be run
WhoFn = Callable[[str], Awaitable[str]]


class SessionsScreen(FilteredScreen):
    VIEW = "sessions"
    BINDINGS = [Binding("r", "refresh", "Refresh")]

    def __init__(self, own: Callable[[], list[OpenSession]], running: Iterable[str],
                 who: WhoFn, filters: dict[str, str] | None = None) -> None:
        super().__init__(filters)
        self._own, self._who = own, who
        self._up = sorted(running)
        self._guest: dict[str, list[tuple[str, str, str]] | str] = {}

    def compose(self) -> ComposeResult:
        yield FilterBar()
        table: DataTable[str] = DataTable(id="sessions", cursor_type="row",
                                          zebra_stripes=True)
        yield table
        yield Static("", id="sessions-note")
        yield Footer()

    def on_mount(self) -> None:
        table: DataTable[str] = self.query_one(DataTable)
        for label, width in COLUMNS:
            table.add_column(label, width=width)
        self.refilter()
        self.action_refresh()

    @work(group="who", exclusive=True, exit_on_error=False)
    async def action_refresh(self) -> None:
        async def ask(name: str) -> None:
            try:
                self._guest[name] = parse_who(await asyncio.wait_for(
                    self._who(name), WHO_TIMEOUT))
            except (BoxuiError, OSError, TimeoutError) as exc:
                self._guest[name] = str(exc) or type(exc).__name__
            self.refilter()

        await asyncio.gather(*(ask(name) for name in self._up))

    def rows(self) -> list[tuple[str, ...]]:
        rows = [(s.machine, "boxui S", "-", s.where, s.started.strftime("%H:%M:%S"))
                for s in self._own()]
        for name in self._up:
            found = self._guest.get(name)
            if isinstance(found, list):
                rows.extend((name, "guest", user, where, when) for user, where, when in found)
        return sorted(rows)

    def refilter(self) -> None:
        wanted = self.filter
        table: DataTable[str] = self.query_one(DataTable)
        table.clear()
        for row in self.rows():
            if wanted.matches(" ".join(row)):
                table.add_row(*row)
        table.border_title = f"sessions {wanted.describe()}".rstrip()
        pending = [n for n in self._up if n not in self._guest]
        failed = {n: v for n, v in self._guest.items() if isinstance(v, str)}
        notes = [f"asking {', '.join(pending)}: who…"] if pending else []
        notes += [f"{n}: who failed: {why}" for n, why in sorted(failed.items())]
        if not self._up:
            notes.append("no machine is running: only boxui's own sessions are listed")
        self.query_one("#sessions-note", Static).update("\n".join(notes).replace("[", r"\["))
