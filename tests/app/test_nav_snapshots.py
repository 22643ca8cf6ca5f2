"""The navigation views and dialogs as pictures: the `:` command line completing, marks
with a filter on, the bulk confirmation, help with a rebound key, the port-forward and
copy dialogs, the sessions view and the images view. The same frozen fleet and clock as
test_snapshots.py (whose fixtures these use); update on purpose with
`bin/test tests/app/test_nav_snapshots.py --snapshot-update` and look at them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from backend.state.port_mapping import PortMapping
from backend.supervision.machine_exec import ExecOutput
from boxui.tui.app import BoxuiApp
from boxui.tui.command_line import CommandLine
from boxui.tui.screens.sessions import OpenSession, SessionsScreen
from tests.app.test_snapshots import (  # noqa: F401  (fixtures)
    bring_up,
    build_app,
    driver,
    fleet,
    frozen,
    home,
)
from tests.fake_driver import FakeDriver

SIZE = (150, 42)


def no_blink(app: BoxuiApp) -> None:
    for field in app.screen.query(Input):
        field.cursor_blink = False


def test_command_line_completing(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                                 snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("colon")
        app = pilot.app
        assert isinstance(app, BoxuiApp)
        app.query_one(CommandLine).cursor_blink = False
        await pilot.press(*"serv")
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_marks_and_a_filter(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                            snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("space", "space")  # api and build-1
        await pilot.press("slash")
        no_blink(pilot.app)  # type: ignore[arg-type]
        await pilot.press(*"!legacy", "enter")
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_bulk_confirmation(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                           snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("down", "space", "space", "ctrl+d")  # build-1, build-2
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_help_with_a_rebound_key(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                                 snap_compare: Any) -> None:
    fleet(home)
    (home / "ui.toml").write_text('[keys]\nstart = "g,f5"\n[aliases]\nup = "start"\n')

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_port_forward_dialog(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                             snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        app = pilot.app
        assert isinstance(app, BoxuiApp)
        await pilot.press("down", "down", "down")  # db: stopped, so no live host ports
        await app.backend.add_port("db", PortMapping.parse("15432:5432"))
        await pilot.press("f")
        await pilot.pause(0.2)
        no_blink(app)
        await pilot.press(*"8080:80/ud")
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_copy_dialog(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                     snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("down", "down", "down")  # db: stopped, so no pid to differ
        await pilot.press("c")
        await pilot.pause(0.2)
        app = pilot.app
        no_blink(app)  # type: ignore[arg-type]
        app.screen.query_one("#host-path", Input).value = "./dist/"
        app.screen.query_one("#guest-path", Input).value = "/srv/app"
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_sessions_view(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                       snap_compare: Any) -> None:
    fleet(home)

    async def who(name: str, argv: list[str], *, timeout: float | None = None) -> ExecOutput:
        users = {"build-1": b"root     pts/0        2026-11-22 11:58 (10.0.2.2)\n"
                            b"builder  pts/1        2026-11-22 11:59 (10.0.2.2)\n"}
        return ExecOutput(0, users.get(name, b""), b"")

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        app = pilot.app
        assert isinstance(app, BoxuiApp)
        app.backend.exec = who  # type: ignore[method-assign]  # no sshd behind the fakes
        app.sessions.append(OpenSession("build-1", "tmux window @3",
                                        datetime(2026, 11, 22, 11, 57), 4242))
        await pilot.press("colon")
        await pilot.press(*"sessions", "enter")
        for _ in range(200):  # every running machine answered `who`
            screen = app.screen
            if isinstance(screen, SessionsScreen) and len(screen._guest) == 2:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)


def test_images_view(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                     snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await bring_up(driver)(pilot)
        await pilot.press("colon")
        await pilot.press(*"images", "enter")
        await pilot.pause(0.5)

    assert snap_compare(build_app(home, driver), terminal_size=SIZE, run_before=run_before)
