"""The live table of machines, reconciled by row key (Dolphie's Processlist pattern).

Rows are added, updated cell by cell, or removed, never rebuilt: each row's last cells are
kept, and only cells whose text changed are written. Columns have fixed widths so a
changing value never re-lays out the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable

from backend.health import HealthSample
from backend.machine_store import LoadedMachine

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int


COLUMNS = (
    Column("name", "NAME", 18),
    Column("state", "STATE", 12),
    Column("accel", "ACCEL", 5),
    Column("vcpus", "CPUS", 4),
    Column("memory", "MEMORY", 8),
    Column("cpu", "CPU %", 6),
    Column("guest_mem", "GUEST MEM", 10),
    Column("uptime", "UPTIME", 8),
    Column("ssh", "SSH", 6),
)

StateColour = Callable[[str], str]


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    mib = value / (1 << 20)
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def human_age(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def row_cells(
    machine: LoadedMachine,
    sample: HealthSample | None,
    now: float,
    busy: str | None = None,
    frame: int = 0,
) -> dict[str, str]:
    spec, record = machine.spec, machine.record
    state = machine.state.value
    running = state in ("booting", "ready", "busy", "draining", "stopping")
    if busy:
        state = f"{SPINNER[frame % len(SPINNER)]} {busy}"
    uptime = None
    if running and record and record.started_at:
        uptime = now - record.started_at.timestamp()
    return {
        "name": machine.name,
        "state": state,
        "accel": (record.accel if record and record.accel else "-") if running else "-",
        "vcpus": str(spec.vcpus) if spec else "-",
        "memory": f"{spec.memory_mib}M" if spec else "-",
        "cpu": f"{sample.cpu_percent:.0f}" if running and sample and
        sample.cpu_percent is not None else "-",
        "guest_mem": human_bytes(sample.guest_used_bytes) if running and sample else "-",
        "uptime": human_age(uptime),
        "ssh": str(record.ssh_port) if running and record and record.ssh_port else "-",
    }


class MachineTable(DataTable[Text | str]):
    """Shows machines; the app tells it what to show, it decides what to redraw."""

    def __init__(self, state_colour: StateColour, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self._state_colour = state_colour
        self._cells: dict[str, dict[str, str]] = {}
        self._states: dict[str, str] = {}
        self.sort_column: str = "name"
        self.sort_reverse = False
        self.updates = 0

    def on_mount(self) -> None:
        for column in COLUMNS:
            self.add_column(column.label, key=column.key, width=column.width)

    def _styled(self, key: str, text: str, state: str) -> Text | str:
        if key == "state":
            return Text(text, style=self._state_colour(state))
        return text

    def reconcile(self, rows: Iterable[tuple[str, dict[str, str], str]]) -> None:
        """`rows` are (name, cells, state) for every machine that should be shown."""
        wanted: dict[str, tuple[dict[str, str], str]] = {n: (c, s) for n, c, s in rows}
        added = False
        with self.app.batch_update():
            for name in [n for n in self._cells if n not in wanted]:
                self.remove_row(name)
                del self._cells[name]
                self._states.pop(name, None)
            for name, (cells, state) in wanted.items():
                old = self._cells.get(name)
                if old is None:
                    self.add_row(*(self._styled(c.key, cells[c.key], state) for c in COLUMNS),
                                 key=name)
                    added = True
                else:
                    for column in COLUMNS:
                        if old[column.key] != cells[column.key] or (
                            column.key == "state" and self._states.get(name) != state
                        ):
                            self.update_cell(name, column.key,
                                             self._styled(column.key, cells[column.key], state))
                            self.updates += 1
                self._cells[name] = cells
                self._states[name] = state
            if added:
                self.apply_sort()

    def restyle(self) -> None:
        """Colours come from the theme: re-apply them after a theme change."""
        with self.app.batch_update():
            for name, cells in self._cells.items():
                state = self._states.get(name, "")
                self.update_cell(name, "state", self._styled("state", cells["state"], state))

    def sort_by(self, column: str) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self.apply_sort()

    def apply_sort(self) -> None:
        numeric = {"vcpus", "cpu", "ssh"}

        def key(value: object) -> tuple[int, object]:
            text = value.plain if isinstance(value, Text) else str(value)
            if self.sort_column in numeric:
                try:
                    return (0, float(text))
                except ValueError:
                    return (1, 0.0)
            return (0, text)

        self.sort(self.sort_column, key=key, reverse=self.sort_reverse)

    @property
    def selected_name(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:
            return None
        return str(row_key.value) if row_key.value is not None else None


def now() -> float:
    return time.time()
