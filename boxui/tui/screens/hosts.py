"""`:hosts` (or `H`): every host the app follows, with kind, address, whether it
answers (and why not), latency, when it was last seen and its machines by state; a
plain host's load, memory, disk and users. `enter` on a host shows only its machines
(the host switcher: it sets the table's `host:` filter); `enter` on `all`, or `escape`,
shows every host's again. `S` opens a session on the highlighted SSH host."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer

from backend.state.disk_size import format_size
from boxui.tui.command_line import register_view
from boxui.tui.fleet.snapshot import LOCAL, HostSnapshot
from boxui.tui.widgets.filter_bar import FilterBar, FilteredScreen

register_view("hosts", "other hosts: reachable, latency, machines; enter switches", "hosts")

#: DETAIL, the long one, last: a plain host's figures, or why a host does not answer
COLUMNS = ("HOST", "KIND", "ADDRESS", "STATE", "LATENCY", "LAST SEEN", "MACHINES", "DETAIL")
ALL = "all"


def plain_figures(facts: dict[str, object]) -> str:
    """`load 0.10 0.20 0.30  mem 1.2/7.8 GiB  disk 40%  users ann, bob`."""
    parts: list[str] = []
    load = facts.get("load")
    if isinstance(load, list) and load:
        parts.append("load " + " ".join(f"{v:.2f}" for v in load))
    for label, key in (("mem", "memory"), ("disk", "disk")):
        value = facts.get(key)
        if isinstance(value, dict) and value.get("total"):
            used, total = int(value.get("used", 0)), int(value["total"])
            parts.append(f"{label} {format_size(used)}/{format_size(total)}")
    users = facts.get("users")
    if isinstance(users, list):
        parts.append("users " + (", ".join(str(u) for u in users) or "-"))
    return "  ".join(parts)


def host_row(snap: HostSnapshot) -> tuple[str, ...]:
    counts = snap.counts()
    machines = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or (
        "-" if snap.kind == "plain" else "none")
    latency = snap.latency_ms if snap.reachable else None  # a lost host's is stale
    detail = (plain_figures(snap.facts) if snap.kind == "plain" else "") if snap.reachable \
        else (snap.reason or "?")
    return (snap.name, snap.kind, snap.address,
            "reachable" if snap.reachable else "unreachable",
            f"{latency:.1f} ms" if latency is not None else "-",
            "now" if snap.reachable else snap.last_seen(), machines, detail)


class HostsScreen(FilteredScreen):
    VIEW = "hosts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Show its machines"),
        Binding("S", "session", "SSH to the host"),
    ]

    def __init__(self, snapshots: Callable[[], list[HostSnapshot]], local_count: int,
                 choose: Callable[[str | None], None], session: Callable[[str], object],
                 filters: dict[str, str] | None = None) -> None:
        super().__init__(filters)
        self._snapshots = snapshots
        self._local_count = local_count
        self._choose = choose
        self._session = session

    def compose(self) -> ComposeResult:
        yield FilterBar()
        yield DataTable(id="hosts", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table: DataTable[str] = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        self.refilter()
        table.focus()

    def reload(self) -> None:
        """A host changed (the app tells): redraw, keeping the cursor's host."""
        self.refilter()

    def refilter(self) -> None:
        wanted = self.filter
        table: DataTable[str] = self.query_one(DataTable)
        keep = self._highlighted()
        table.clear()
        rows = [(ALL, "", "", "", "", "", "every host's machines", ""),
                (LOCAL, "local", "this machine", "reachable", "-", "now",
                 f"{self._local_count}", ""),
                *(host_row(s) for s in self._snapshots())]
        for row in rows:
            if row[0] in (ALL, LOCAL) or wanted.matches(" ".join(row)):
                table.add_row(*row, key=row[0])
        if keep is not None and keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep))
        table.border_title = f"hosts {wanted.describe()}".rstrip()

    def _highlighted(self) -> str | None:
        table: DataTable[str] = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_choose()

    def action_choose(self) -> None:
        host = self._highlighted()
        self._choose(None if host in (None, ALL) else host)
        self.dismiss(None)

    def action_back(self) -> None:
        if self.query_one(FilterBar).has_class("-shown"):
            super().action_back()
            return
        self._choose(None)
        self.dismiss(None)

    def action_session(self) -> None:
        host = self._highlighted()
        if host not in (None, ALL, LOCAL):
            self._session(host)
