"""Keys in their place, driven through Pilot over the fake driver: a full-screen view
owns its keys (the main screen's `s`, `x`, `n`... do nothing there; `:`, `?` and quitting
still work), `?` lists only the keys that act where the focus is, as `ui.toml` bound
them, the `:` history outlives the app, `S` reaches the app's own state dir (not the
default one), and `/` filters the full-screen console."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from backend.guest.machine_seed import create_machine_keys
from backend.state.state_dir import open_state_dir
from backend.supervision.machine_exec import ExecOutput
from boxui.tui.app import BoxuiApp
from boxui.tui.command_history import HISTORY_FILE, MAX_ENTRIES
from boxui.tui.command_line import CommandLine
from boxui.tui.screens.cells import CellsScreen
from boxui.tui.screens.help import HelpScreen, KeyGroup
from boxui.tui.screens.images import ImagesScreen
from boxui.tui.screens.logs import LogsScreen
from boxui.tui.screens.services import ServicesScreen
from boxui.tui.screens.sessions import SessionsScreen
from boxui.tui.screens.timeline import TimelineScreen
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import MakeApp, app_over, seed
from tests.app.pilot_helpers import SIZE, cell, open_logs, started, until
from tests.fake_driver import FakeDriver


async def command(pilot: Pilot[None], text: str) -> None:
    await pilot.press("colon")
    await until(pilot, lambda: pilot.app.query_one(CommandLine).has_focus)
    pilot.app.query_one(CommandLine).value = text
    await pilot.press("enter")


def groups(app: BoxuiApp) -> dict[str, dict[str, str]]:
    """The open help's groups: title -> {what: keys}."""
    screen = app.screen
    assert isinstance(screen, HelpScreen)
    return {g.title: {what: keys for keys, what in g.keys} for g in screen.groups}


def all_keys(found: list[KeyGroup]) -> set[str]:
    return {key for g in found for keys, _ in g.keys for key in keys.split(" / ")}


# --- 1. the `:` history outlives the app ------------------------------------------------


async def test_command_history_is_kept_across_sessions(home: Path, make_app: MakeApp) -> None:
    await seed(home, "web", "db")
    path = home / HISTORY_FILE
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await command(pilot, "machines /db")
        await command(pilot, "cells")
        await until(pilot, lambda: path.exists() and path.read_text() == "machines /db\ncells\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = make_app()
    async with again.run_test(size=SIZE) as pilot:
        await started(pilot, again)
        await pilot.press("colon")
        line = again.query_one(CommandLine)
        await until(pilot, lambda: line.has_focus)
        await pilot.press("up")
        assert line.value == "cells"
        await pilot.press("up")
        assert line.value == "machines /db"
        await pilot.press("up")  # the oldest stays
        assert line.value == "machines /db"
        await pilot.press("down")
        assert line.value == "cells"
        await pilot.press("down")
        assert line.value == ""
        await pilot.press("up", "up", "escape", "colon")  # a walk given up starts over
        await until(pilot, lambda: line.has_focus)
        await pilot.press("up")
        assert line.value == "cells"
        await pilot.press("escape")


async def test_command_history_is_bounded(home: Path, make_app: MakeApp) -> None:
    open_state_dir(home)
    path = home / HISTORY_FILE
    path.write_text("".join(f"images /{i}\n" for i in range(MAX_ENTRIES + 100)))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        line = app.query_one(CommandLine)
        assert len(line.history) == MAX_ENTRIES and line.history[0] == "images /100"
        await command(pilot, "machines")
        await until(pilot, lambda: path.read_text().endswith("images /599\nmachines\n"))
    kept = path.read_text().splitlines()
    assert len(kept) == MAX_ENTRIES and kept[0] == "images /101"


# --- 2. `?`: the keys that act here, as bound now --------------------------------------


async def test_help_lists_the_keys_that_act_where_the_focus_is(home: Path,
                                                               make_app: MakeApp) -> None:
    """`?` lists the keys that act where the focus is, as ui.toml bound them (a rebound
    start shows as its new key: test_navigation's keymap test relies on this one)."""
    async with app_over(home, make_app, "vm", ui_toml='[keys]\nstart = "g"\n'
                        'help = "f1,question_mark"\n') as (app, pilot):
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        shown = groups(app)
        assert shown["machines (the main screen)"]["Start"] == "g"  # as ui.toml bound it
        assert shown["machines (the main screen)"]["Stop"] == "x"
        assert shown["everywhere"]["Help"] == "f1 / ?"
        assert shown["everywhere"]["Command"] == ":"
        assert shown["the machines table (has the focus)"]["Up"] == "up / k"
        screen = app.screen
        assert isinstance(screen, HelpScreen)
        # Textual's sideways paging (the table fits), clipboard and quit hint: not listed
        assert not all_keys(screen.groups) & {"s", "ctrl+pageup", "ctrl+pagedown", "left",
                                              "right", "ctrl+c"}
        assert "ctrl+pageup" not in app.export_screenshot()
        await pilot.press("escape")
        app.query_one(EventStream).focus()
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        shown = groups(app)
        pane = shown["the events pane (has the focus)"]
        assert pane["The event whole, as JSON"] == "enter" and pane["Follow"] == "escape"
        assert "the machines table (has the focus)" not in shown
        await pilot.press("escape")


# --- 3. a full-screen view owns its keys ------------------------------------------------

#: the main screen's keys that no view binds for itself
MAIN_KEYS = ("s", "x", "ctrl+d", "n", "e", "S", "f", "c", "u", "space", "t", "a", "o")


async def open_view(pilot: Pilot[None], view: str) -> None:
    if view == "logs":
        await pilot.press("l")
    else:
        await command(pilot, view)


VIEW_SCREENS = {"timeline": TimelineScreen, "sessions": SessionsScreen,
                "images": ImagesScreen, "services": ServicesScreen, "cells": CellsScreen,
                "logs": LogsScreen}


@pytest.mark.parametrize("view", sorted(VIEW_SCREENS))
async def test_a_full_screen_view_owns_its_keys(home: Path, make_app: MakeApp,
                                                fake_driver: FakeDriver,
                                                monkeypatch: pytest.MonkeyPatch,
                                                view: str) -> None:
    await seed(home, "vm", "web")  # vm first: the selected row
    app = make_app(editor="true", ssh_argv=lambda name: ["true"])

    async def who(name: str, argv: list[str], *, timeout: float | None = None) -> ExecOutput:
        return ExecOutput(0, b"", b"")

    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        monkeypatch.setattr(app.backend, "exec", who)
        await app.backend.start("vm")
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        table = app.query_one(MachineTable)
        theme, sort, scope = app.theme, table.sort_column, app.query_one(EventStream).only
        await open_view(pilot, view)
        await until(pilot, lambda: isinstance(app.screen, VIEW_SCREENS[view]))
        shown = app.screen
        calls, done = list(fake_driver.calls), list(app.actions_done)
        assert not {b.binding.action for b in shown.active_bindings.values()} & {
            "start", "stop", "delete", "new_machine"}, "the footer offers the table's keys"
        await pilot.press(*MAIN_KEYS)
        await pilot.pause(0.3)
        assert app.screen is shown
        assert fake_driver.calls == calls and app.actions_done == done
        assert cell(app, "vm", "state") == "ready" and table.marked == set()
        assert (app.theme, table.sort_column, app.query_one(EventStream).only) == (
            theme, sort, scope)
        # the global keys still pass: help (of this view), then `:`
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        helped = groups(app)
        assert "machines (the main screen)" not in helped
        assert any(title.startswith("this view") for title in helped)
        assert helped["everywhere"]["Command"] == ":"
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is shown)
        await command(pilot, "machines")
        await until(pilot, lambda: len(app.screen_stack) == 1)
        await pilot.press("x")  # back on the main screen the keys act again
        await until(pilot, lambda: cell(app, "vm", "state") == "stopped")


# --- 4. `S` reaches the app's own state dir ---------------------------------------------


def recording_program(bin_dir: Path, name: str, log: Path, body: str = "") -> None:
    """A `name` on PATH that writes its argv (NUL-separated) to `log`, then runs `body`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                      f"open({str(log)!r}, 'w').write('\\0'.join(sys.argv[1:]))\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("in_tmux", [False, True], ids=["suspended", "tmux"])
async def test_ssh_uses_the_apps_state_dir(home: Path, make_app: MakeApp, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           in_tmux: bool) -> None:
    await seed(home, "vm")
    bin_dir, ssh_log, tmux_log = tmp_path / "bin", tmp_path / "ssh-argv", tmp_path / "tmux-argv"
    recording_program(bin_dir, "ssh", ssh_log)
    recording_program(bin_dir, "tmux", tmux_log, body=(
        "child = subprocess.Popen(['sleep', '0.3'], start_new_session=True)\n"
        "print('@7', child.pid)\n"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if in_tmux:
        monkeypatch.setenv("TMUX", "/tmp/tmux-test,1,0")
    else:
        monkeypatch.delenv("TMUX", raising=False)
    app = make_app()  # the default argv: no stand-in for ssh_exec_argv
    default_home = tmp_path / "the-default-state-dir"
    monkeypatch.setenv("BOXUI_HOME", str(default_home))  # not the app's
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await app.backend.start("vm")
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        machine_dir = open_state_dir(home).machine_dir("vm")
        create_machine_keys(machine_dir)  # the fake boot files make none
        await pilot.press("S")
        if in_tmux:
            await until(pilot, lambda: tmux_log.exists())
            argv = tmux_log.read_text().split("\0")
            argv = argv[argv.index("--") + 1:]
        else:
            await until(pilot, lambda: ("ssh vm", "0") in app.actions_done)
            argv = ssh_log.read_text().split("\0")
            argv.insert(0, str(bin_dir / "ssh"))
    assert argv[0] == str(bin_dir / "ssh")
    key = argv[argv.index("-i") + 1]
    assert key.startswith(str(machine_dir.absolute())), key
    known = next(a for a in argv if a.startswith("UserKnownHostsFile="))
    assert str(machine_dir.absolute()) in known
    assert not default_home.exists(), "the default state dir was read (and made)"


# --- 6. `/` in the full-screen console --------------------------------------------------


async def test_slash_filters_the_full_screen_console(home: Path, make_app: MakeApp) -> None:
    await seed(home, "vm")
    open_state_dir(home).console_log("vm").write_text("one\nBOXUI-READY\ntwo\nthree\n")
    async with app_over(home, make_app) as (app, pilot):
        pane = await open_logs(pilot, app)
        await until(pilot, lambda: len(pane.lines) == 4)
        await pilot.press("slash", *"~^t", "enter")
        await until(pilot, lambda: [str(x.text) for x in pane.lines] == ["two", "three"])
        assert app.filters["logs"] == "~^t"
        await pilot.press("escape")  # leaves the view; the filter is kept for the session
        await until(pilot, lambda: len(app.screen_stack) == 1)
        pane = await open_logs(pilot, app)
        await until(pilot, lambda: [str(x.text) for x in pane.lines] == ["two", "three"])
        await pilot.press("slash")
        bar = app.screen.query_one("#filter-bar", Input)
        assert bar.value == "~^t"
        await pilot.press("escape")  # clears it
        await until(pilot, lambda: len(pane.lines) == 4)
