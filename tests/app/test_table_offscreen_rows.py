"""Rows that change off screen are only noted (the app builds the rows on screen each
health round, not all 1,000); they must still show their latest values whenever they
are drawn, sorted or read."""

from __future__ import annotations

from textual.app import App, ComposeResult

from boxui.tui.widgets.machine_table import COLUMNS, MachineTable, Row

ROWS = 60
SIZE = (120, 20)  # about 15 rows on screen


def cells(name: str, cpu: int) -> dict[str, str]:
    return {column.key: name for column in COLUMNS} | {"cpu": str(cpu), "state": "ready"}


class TableApp(App[None]):
    CSS = "MachineTable { height: 1fr; }"

    def __init__(self) -> None:
        super().__init__()
        self.cpu = {f"m{i:02d}": i for i in range(ROWS)}
        self.asked: list[str] = []

    def compose(self) -> ComposeResult:
        yield MachineTable(lambda _state: "", row_source=self.row, id="machines")

    def row(self, name: str) -> Row | None:
        self.asked.append(name)
        return (cells(name, self.cpu[name]), "ready") if name in self.cpu else None

    def rows(self, names: list[str]) -> list[tuple[str, dict[str, str], str]]:
        return [(name, cells(name, self.cpu[name]), "ready") for name in names]


def line_text(table: MachineTable, y: int) -> str:
    return "".join(segment.text for segment in table.render_line(y))


async def test_rows_changed_off_screen_are_built_when_drawn_sorted_or_read() -> None:
    app = TableApp()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(MachineTable)
        table.reconcile(app.rows(sorted(app.cpu)))
        await pilot.pause()
        page = len(table._window())
        assert 5 < page < ROWS - 5

        # a health round: every machine's CPU changes; only those on screen are built
        app.cpu = {name: 100 + cpu for name, cpu in app.cpu.items()}
        shown = table.changed(sorted(app.cpu))
        assert shown == [f"m{i:02d}" for i in range(page)]
        table.update(app.rows(shown))
        assert app.asked == []
        assert line_text(table, 1).split()[6] == "100"  # row 0 on screen: updated

        # read: the row is built then, with the latest value
        assert table.get_cell("m50", "cpu") == "150"
        assert app.asked == ["m50"]

        # drawn: scrolled to the end, the last row shows its latest value
        await pilot.press("end")
        await pilot.pause()
        last = line_text(table, page).split()
        assert last[0] == "m59" and last[6] == "159"

        # sorted: by CPU, reversed, every row built first
        app.cpu["m30"] = 999
        table.changed(["m30"])
        table.sort_by("cpu")
        table.sort_by("cpu")
        assert table.row_names[:2] == ["m30", "m59"]

        # a full reconcile gives every row: none is left to build later
        app.asked.clear()
        app.cpu["m40"] = 7
        table.changed(["m40"])
        table.reconcile(app.rows(sorted(app.cpu)))
        assert table.get_cell("m40", "cpu") == "7" and app.asked == []
