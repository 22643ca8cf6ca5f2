"""k9s-style navigation driven through Pilot over the fake driver: the `:` command line,
`/` filters per view, marks with bulk actions, keys from ui.toml and the help that shows
them, port forwards, copies, SSH into a tmux window and the sessions view."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, ProgressBar, Static

from backend.state.state_dir import open_state_dir
from backend.supervision.file_copy import Progress
from backend.supervision.machine_exec import ExecOutput
from boxui.tui.command_line import CommandLine
from boxui.tui.screens.cells import CellsScreen
from boxui.tui.screens.confirm_bulk import ConfirmBulkScreen
from boxui.tui.screens.copy_dialog import CopyScreen
from boxui.tui.screens.help import HelpScreen
from boxui.tui.screens.images import ImagesScreen
from boxui.tui.screens.ports_dialog import PortsScreen
from boxui.tui.screens.sessions import SessionsScreen
from boxui.tui.widgets.console_pane import ConsolePane
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import MakeApp, app_over, embedded, seed
from tests.app.pilot_helpers import SIZE, cell, rows, started, until
from tests.fake_driver import FakeDriver


async def command(pilot: Pilot[None], text: str) -> None:
    await pilot.press("colon")
    await until(pilot, lambda: pilot.app.query_one(CommandLine).has_focus)
    pilot.app.query_one(CommandLine).value = text
    await pilot.press("enter")


async def answer_bulk(pilot: Pilot[None], answer: str) -> tuple[ConfirmBulkScreen, str]:
    """The one confirmation a bulk action asks: waited for, read, answered ("y"/"n") and
    gone; the screen (its verb and names) and the text it showed."""
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, ConfirmBulkScreen))
    bulk = app.screen
    assert isinstance(bulk, ConfirmBulkScreen)
    text = str(bulk.query(Static)[1].render())
    await pilot.press(answer)
    await until(pilot, lambda: app.screen is not bulk)
    return bulk, text


async def test_command_line_views_and_verbs(home: Path, make_app: MakeApp,
                                            fake_driver: FakeDriver) -> None:
    await seed(home, "web-1", "web-2", "db")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await command(pilot, "start db")  # one machine: no confirmation, as `s`
        await until(pilot, lambda: cell(app, "db", "state") == "ready")
        await command(pilot, "start web-1 web-2")
        _bulk, text = await answer_bulk(pilot, "y")
        assert "web-1" in text and "web-2" in text and "db" not in text
        await until(pilot, lambda: cell(app, "web-1", "state") == "ready"
                    and cell(app, "web-2", "state") == "ready")
        await command(pilot, "cells")
        await until(pilot, lambda: isinstance(app.screen, CellsScreen))
        await command(pilot, "images")  # from another view: `:` works there too
        await until(pilot, lambda: isinstance(app.screen, ImagesScreen))
        await command(pilot, "machines /web")
        await until(pilot, lambda: rows(app) == ["web-1", "web-2"])
        await command(pilot, "nonsense")
        await until(pilot, lambda: any("no such view" in str(n.message)
                                       for n in app._notifications))
        await command(pilot, "stop ghost")
        await until(pilot, lambda: any("no machine named ghost" in str(n.message)
                                       for n in app._notifications))
        assert ("stop", "ghost") not in fake_driver.calls


async def test_command_line_history_completion_and_aliases(home: Path,
                                                           make_app: MakeApp) -> None:
    await seed(home, "web-1", "db")
    (home / "ui.toml").write_text('[aliases]\ndbs = "machines /db"\n')
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await command(pilot, "dbs")
        await until(pilot, lambda: rows(app) == ["db"])
        await pilot.press("colon")
        line = app.query_one(CommandLine)
        await pilot.press(*"serv")
        await until(pilot, lambda: line._suggestion == "services")
        await pilot.press("tab")
        assert line.value == "services"
        await pilot.press("ctrl+u", "up")
        assert line.value == "dbs"  # the history, newest first
        await pilot.press("escape")
        assert not line.has_class("-shown")


async def test_filters_per_view_invert_regex_and_remembered(home: Path,
                                                            make_app: MakeApp) -> None:
    await seed(home, "web-1", "web-2", "db-1", "db-10")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("slash", *"!web", "enter")
        await until(pilot, lambda: rows(app) == ["db-1", "db-10"])
        assert "/!web" in str(app.query_one(MachineTable).border_title)
        field = app.query_one("#filter", Input)
        field.value = "~^db-\\d$"
        await until(pilot, lambda: rows(app) == ["db-1"])
        await pilot.press("enter")
        # the events pane has a filter of its own
        app.query_one(EventStream).focus()
        await pilot.press("slash", *"db-10")
        events = app.query_one(EventStream)
        await until(pilot, lambda: events._shown != [] and all(
            "db-10" in text.plain for _, text in events._shown))
        await pilot.press("enter")
        assert rows(app) == ["db-1"]  # the machines' filter stayed as it was
        # a view's filter is remembered when it is opened again
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, CellsScreen))
        await pilot.press("slash", *"fail")
        await pilot.press("enter", "escape")
        await until(pilot, lambda: not isinstance(app.screen, CellsScreen))
        await pilot.press("C")
        await until(pilot, lambda: isinstance(app.screen, CellsScreen))
        assert app.filters["cells"] == "fail"
        assert "/fail" in str(app.screen.query_one(DataTable).border_title)


async def test_console_filter(home: Path, make_app: MakeApp) -> None:
    await seed(home, "vm")
    open_state_dir(home).console_log("vm").write_text("one\nBOXUI-READY\ntwo\n")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        pane = app.query_one(ConsolePane)
        await until(pilot, lambda: len(pane.lines) == 3)
        pane.focus()
        await pilot.press("slash", *"!~^(one|two)$", "enter")
        await until(pilot, lambda: [str(line.text) for line in pane.lines] == ["BOXUI-READY"])
        assert app.focused is pane


async def test_marks_and_bulk_stop_with_one_confirmation(home: Path, make_app: MakeApp,
                                                         fake_driver: FakeDriver) -> None:
    await seed(home, "a", "b", "c")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        for name in ("a", "b", "c"):
            await app.backend.start(name)
        await until(pilot, lambda: all(cell(app, n, "state") == "ready" for n in "abc"))
        await pilot.press("space", "down", "space")  # a (the cursor moves on), then c
        table = app.query_one(MachineTable)
        assert table.marked_names == ["a", "c"]
        assert "2 marked" in str(table.border_title)
        await pilot.press("slash", *"~^c", "enter")  # hides a: its mark stays, unused
        await until(pilot, lambda: rows(app) == ["c"])
        assert table.marked_names == ["c"] and "1 marked" in str(table.border_title)
        await pilot.press("escape")  # clears the filter: a is shown marked again
        await until(pilot, lambda: table.marked_names == ["a", "c"])
        await pilot.press("x")
        bulk, _text = await answer_bulk(pilot, "y")
        assert bulk.names == ["a", "c"]
        await until(pilot, lambda: cell(app, "a", "state") == "stopped"
                    and cell(app, "c", "state") == "stopped")
        assert cell(app, "b", "state") == "ready" and table.marked == set()
        await pilot.press("up", "space", "space", "ctrl+d")  # b and c marked: delete both
        bulk, _text = await answer_bulk(pilot, "n")
        assert bulk.verb == "delete" and bulk.names == ["b", "c"]
        assert rows(app) == ["a", "b", "c"]
        await pilot.press("escape")  # clears the marks
        assert table.marked == set()


async def test_keymap_from_ui_toml_and_help_shows_it(home: Path, make_app: MakeApp,
                                                     fake_driver: FakeDriver) -> None:
    """A key rebound in ui.toml acts as bound (and the old one no longer does); the help
    lists it so too (in full: test_views_and_keys' help test)."""
    async with app_over(home, make_app, "vm", ui_toml='[keys]\nstart = "g"\n') as (app, pilot):
        await pilot.press("s")  # no longer start
        await pilot.pause(0.2)
        assert ("start", "vm") not in fake_driver.calls
        await pilot.press("g")
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        keys = dict((what, key) for key, what in app.keys_in_force())
        assert keys["Start"] == "g" and keys["Stop"] == "x"
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen) and ("g", "Start") in help_screen.keys


async def test_a_bad_ui_toml_is_reported_naming_the_key(home: Path, make_app: MakeApp) -> None:
    await seed(home, "vm")
    (home / "ui.toml").write_text('[keys]\nstrat = "g"\n')
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert any("keys.strat" in str(n.message) for n in app._notifications)
        assert ("s", "Start") in app.keys_in_force()


async def test_port_forward_dialog_adds_and_removes(home: Path, make_app: MakeApp) -> None:
    await seed(home, "vm")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, PortsScreen))
        await pilot.press(*"18080:80", "enter")
        backend = embedded(app)
        await until(pilot, lambda: [str(p) for p in backend.load_spec("vm").ports]
                    == ["18080:80"])
        await pilot.press(*"bad", "enter")
        await until(pilot, lambda: str(app.screen.query_one("#ports-error", Static).render())
                    != "")
        await pilot.press("tab", "down", "d")  # to the list, highlight, remove
        await until(pilot, lambda: backend.load_spec("vm").ports == [])
        await pilot.press("f")  # typed into the field: not a key here
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, PortsScreen))


async def test_detail_pane_shows_ports(home: Path, make_app: MakeApp) -> None:
    from backend.state.port_mapping import PortMapping
    await seed(home, "vm", ports=[PortMapping.parse("8080:80")])
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        text = str(app.query_one("#detail-text", Static).render())
        assert "8080->80/tcp" in text


async def test_copy_dialog_runs_the_backend_copy_with_progress(
        home: Path, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(home, "vm")
    app = make_app()
    calls: list[tuple[str, str, str, bool]] = []

    async def copy(name: str, source: str, target: str, *, recursive: bool,
                   progress: Progress | None = None) -> None:
        calls.append((name, source, target, recursive))
        assert progress is not None
        progress("big.tar", 512, 1024)

    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        monkeypatch.setattr(app.backend, "copy", copy)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CopyScreen))
        screen = app.screen
        assert isinstance(screen, CopyScreen)
        screen.query_one("#host-path", Input).value = "./big.tar"
        screen.query_one("#guest-path", Input).value = "/root/"
        await pilot.press("enter")
        await until(pilot, lambda: screen.copied != [])
        assert calls == [("vm", "./big.tar", "vm:/root/", False)]
        assert screen.query_one(ProgressBar).percentage == 1.0
        assert "copied" in str(screen.query_one("#copy-status", Static).render())


async def test_copy_dialog_shows_a_failure_in_one_line(home: Path, make_app: MakeApp) -> None:
    await seed(home, "vm")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CopyScreen))
        screen = app.screen
        screen.query_one("#host-path", Input).value = "./x"
        screen.query_one("#guest-path", Input).value = "/root/"
        await pilot.press("enter")  # the real copy: the machine is not running
        status = screen.query_one("#copy-status", Static)
        await until(pilot, lambda: "not running" in str(status.render()))
        assert isinstance(app.screen, CopyScreen)


def fake_tmux(bin_dir: Path, log: Path) -> None:
    """A `tmux` that records its argv and opens its 'window' as a short sleep."""
    bin_dir.mkdir()
    script = bin_dir / "tmux"
    script.write_text(f"""#!{sys.executable}
import subprocess, sys
open({str(log)!r}, "w").write("\\0".join(sys.argv[1:]))
child = subprocess.Popen(["sleep", "0.6"], start_new_session=True)
print("@7", child.pid)
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


async def test_ssh_inside_tmux_opens_a_window_and_a_session(
        home: Path, make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(home, "vm")
    log = tmp_path / "tmux-argv"
    fake_tmux(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMUX", "/tmp/tmux-test,1,0")
    app = make_app(ssh_argv=lambda name: ["ssh", "-p", "2222", f"root@{name}"])
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("S")
        await until(pilot, lambda: app.sessions != [])
        assert log.read_text().split("\0") == [
            "new-window", "-P", "-F", "#{window_id} #{pane_pid}", "-n", "vm", "--",
            "ssh", "-p", "2222", "root@vm"]
        assert app.sessions[0].where == "tmux window @7"
        assert app.suspended_events == []  # the app stayed on screen
        await until(pilot, lambda: app.sessions == [], timeout=5)  # the window closed


async def test_sessions_view_lists_own_and_guest_sessions(
        home: Path, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(home, "vm", "idle")
    app = make_app()
    asked: list[tuple[str, list[str]]] = []

    async def exec_(name: str, argv: list[str], *, timeout: float | None = None) -> ExecOutput:
        asked.append((name, argv))
        return ExecOutput(0, b"root     pts/0        2026-11-30 14:00 (10.0.2.2)\n", b"")

    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await app.backend.start("vm")
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        monkeypatch.setattr(app.backend, "exec", exec_)
        await command(pilot, "sessions")
        await until(pilot, lambda: isinstance(app.screen, SessionsScreen))
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 1)
        assert asked == [("vm", ["who"])]  # only running machines are asked
        assert [str(c) for c in table.get_row_at(0)][:4] == ["vm", "guest", "root",
                                                             "pts/0 (10.0.2.2)"]
