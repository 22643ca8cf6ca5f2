"""Every action of the app, driven through Pilot against the fake driver, checked on the
screen (the table's cells) and on the calls the backend made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import Input, Select, Static

from backend.state.event_log import read_log
from backend.state.state_dir import open_state_dir
from boxui.tui.screens.confirm_delete import ConfirmDeleteScreen
from boxui.tui.screens.help import HelpScreen
from boxui.tui.screens.new_machine import NewMachineScreen
from boxui.tui.widgets.detail_pane import DetailPane
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import SPINNER, MachineTable
from boxui.tui.widgets.status_header import StatusHeader
from tests.app.conftest import MakeApp, app_over, embedded, seed
from tests.app.pilot_helpers import SIZE, cell, open_logs, rows, started, until
from tests.fake_driver import FakeBootFiles, FakeDriver
from tests.templates.helpers import REVISION, fabricate


async def test_startup_shows_machines_and_header(home: Path, make_app: MakeApp) -> None:
    await seed(home, "alpha", "beta", vcpus=2)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert rows(app) == ["alpha", "beta"]
        assert cell(app, "alpha", "state") == "stopped" and cell(app, "alpha", "vcpus") == "2"
        header = str(app.query_one(StatusHeader).render())
        assert "2 machines" in header and "2 stopped" in header and "TCG" in header


async def test_start_stop_restart(home: Path, make_app: MakeApp,
                                  fake_driver: FakeDriver) -> None:
    await seed(home, "vm")
    fake_driver.script("vm").boot_delay = 0.4
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("s")
        # a spinner in the row while it starts ("starting", then the "boot" phase)
        await until(pilot, lambda: cell(app, "vm", "state")[0] in SPINNER)
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        assert ("start", "vm") in fake_driver.calls
        assert cell(app, "vm", "accel") == "tcg" and cell(app, "vm", "ssh") != "-"
        await pilot.press("r")
        await until(pilot, lambda: ("restarting", "vm") in app.actions_done)
        assert fake_driver.calls.count(("start", "vm")) == 2
        assert ("stop", "vm") in fake_driver.calls
        await pilot.press("x")
        await until(pilot, lambda: cell(app, "vm", "state") == "stopped")
        assert fake_driver.calls.count(("stop", "vm")) == 2


async def test_new_machine_form_validates_inline(home: Path, make_app: MakeApp,
                                                 fake_driver: FakeDriver) -> None:
    await seed(home, "taken")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewMachineScreen))
        form = app.screen
        await pilot.click("#name")
        await pilot.press(*"Bad/Name")
        await pilot.pause(0.1)
        assert "a-z" in str(form.query_one("#name-error", Static).render())
        form.query_one("#name", Input).value = "taken"
        await pilot.pause(0.1)
        assert "already exists" in str(form.query_one("#name-error", Static).render())
        form.query_one("#vcpus", Input).value = "0"
        await pilot.pause(0.1)
        assert "1 to" in str(form.query_one("#vcpus-error", Static).render())
        await pilot.click("#create")
        await pilot.pause(0.3)  # a Button ignores clicks while its 0.2 s press effect shows
        assert isinstance(app.screen, NewMachineScreen), "an invalid form must not submit"
        form.query_one("#name", Input).value = "fresh"
        form.query_one("#vcpus", Input).value = "2"
        form.query_one("#memory", Input).value = "512"
        await pilot.click("#create")
        await until(pilot, lambda: "fresh" in rows(app) and cell(app, "fresh", "state") == "ready")
        assert ("start", "fresh") in fake_driver.calls
        assert cell(app, "fresh", "memory") == "512M"


async def test_delete_asks_first(home: Path, make_app: MakeApp) -> None:
    await seed(home, "keep", "gone")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert rows(app) == ["gone", "keep"]  # sorted by name; the cursor is on "gone"
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen))
        await pilot.press("n")
        await pilot.pause(0.2)
        assert rows(app) == ["gone", "keep"]
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen))
        await pilot.press("y")
        await until(pilot, lambda: rows(app) == ["keep"])
        assert not open_state_dir(home).machine_dir("gone").exists()


async def test_ssh_suspends_while_backend_keeps_supervising(
        home: Path, tmp_path: Path, make_app: MakeApp, fake_driver: FakeDriver) -> None:
    await seed(home, "vm")
    marker = tmp_path / "ssh-ended"
    # the "ssh session" lasts 1.5 s; the guest dies 0.3 s after the session begins
    script = ("import time, pathlib; time.sleep(1.5); "
              f"pathlib.Path({str(marker)!r}).write_text(str(time.time()))")
    app = make_app(ssh_argv=lambda name: ["python3", "-c", script])
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("s")
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        pid = embedded(app).supervisor.handles["vm"].pid
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, lambda: __import__("os").kill(pid, 9))
        await pilot.press("S")
        await until(pilot, lambda: ("ssh vm", "0") in app.actions_done, timeout=10)
        crash = [e for e in read_log(open_state_dir(home).event_log).events
                 if e.type.endswith(".crashed")]
        assert crash, "the backend must notice the crash while the terminal is handed over"
        assert crash[0].time.timestamp() < float(marker.read_text())
        await until(pilot, lambda: cell(app, "vm", "state") == "crashed")


async def test_edit_reloads_and_invalid_edit_keeps_last_spec(
        home: Path, tmp_path: Path, make_app: MakeApp) -> None:
    await seed(home, "vm")
    editor = tmp_path / "editor.py"
    editor.write_text("import sys, pathlib\np = pathlib.Path(sys.argv[1])\n"
                      "p.write_text(p.read_text().replace('vcpus = 1', 'vcpus = 3'))\n")
    app = make_app(editor=f"python3 {editor}")
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("e")
        await until(pilot, lambda: cell(app, "vm", "vcpus") == "3")
        notes: list[str] = []
        app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
        path = open_state_dir(home).spec_path("vm")
        path.write_text(path.read_text().replace("vcpus = 3", 'vcpus = "lots"'))
        await until(pilot, lambda: any("vcpus" in n and "machine.toml" in n for n in notes))
        assert cell(app, "vm", "vcpus") == "3", "the last valid spec stays"


async def test_logs_help_filter_sort_events_theme(home: Path, make_app: MakeApp) -> None:
    await seed(home, "web-1", "web-2", "db-1")
    console = open_state_dir(home).console_log("db-1")
    console.write_text("booting...\nBOXUI-READY x\n")
    async with app_over(home, make_app) as (app, pilot):
        pane = await open_logs(pilot, app)
        await until(pilot, lambda: any("BOXUI-READY" in str(line.text) for line in pane.lines))
        await pilot.press("escape")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "ctrl+d" in str(app.screen.query_one(".help-column", Static).render())
        await pilot.press("escape")
        await pilot.press("slash")
        await pilot.press(*"web")
        await until(pilot, lambda: rows(app) == ["web-1", "web-2"])
        await pilot.press("escape")
        await until(pilot, lambda: len(rows(app)) == 3)
        table = app.query_one(MachineTable)
        table.sort_by("name")  # same column again: reversed
        assert rows(app) == ["web-2", "web-1", "db-1"]
        events = app.query_one(EventStream)
        await pilot.press("a")
        assert events.only == app.query_one(MachineTable).selected_name
        await pilot.press("a")
        assert events.only is None
        before = app.theme
        await pilot.press("t")
        await pilot.pause(0.1)
        assert app.theme != before


async def test_command_palette_lists_every_action(home: Path, make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for wanted in ("New machine", "Start machine", "Stop machine", "Restart machine",
                       "Delete machine", "Edit machine.toml", "SSH into machine",
                       "Console log", "Filter machines", "Next theme", "Keys"):
            assert wanted in titles


async def test_errors_become_notifications(home: Path, make_app: MakeApp,
                                           fake_driver: FakeDriver) -> None:
    await seed(home, "vm")
    fake_driver.script("vm").fail_boot = "kernel panic (scripted)"
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("s")
        await until(pilot, lambda: cell(app, "vm", "state") == "failed")
        await until(pilot, lambda: any("kernel panic" in n.message
                                       for n in app._notifications))


async def test_long_work_shows_its_phase_in_the_row_and_details(
        home: Path, make_app: MakeApp, fake_driver: FakeDriver) -> None:
    await seed(home, "vm")
    gate = asyncio.Event()
    app = make_app(boot_files=FakeBootFiles(gate))
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("s")
        await until(pilot, lambda: cell(app, "vm", "state").endswith(" pack"))
        assert cell(app, "vm", "state")[0] in SPINNER
        detail = app.query_one(DetailPane).query_one("#detail-text", Static)
        await until(pilot, lambda: "pack: initramfs 3 of 7 MiB" in str(detail.render()))
        gate.set()
        await until(pilot, lambda: cell(app, "vm", "state") == "ready")
        assert "pack:" not in str(detail.render())
        assert ("start", "vm") in fake_driver.calls


async def test_new_machine_form_offers_templates(home: Path, make_app: MakeApp,
                                                 fake_driver: FakeDriver) -> None:
    fabricate(open_state_dir(home), "web", vcpus=2, memory_mib=384)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewMachineScreen))
        form = app.screen
        assert isinstance(form, NewMachineScreen)
        select = form.query_one("#image", Select)
        await until(pilot, lambda: bool(form.templates))
        select.value = "template:web:worker"  # raises if the Select does not offer it
        await pilot.pause(0.1)
        assert form.query_one("#vcpus", Input).value == "2"
        assert form.query_one("#memory", Input).value == "384"
        form.query_one("#name", Input).value = "from-tpl"
        await pilot.click("#create")
        await until(pilot, lambda: "from-tpl" in rows(app)
                    and cell(app, "from-tpl", "state") == "ready")
        spec = app.backend.machine("from-tpl").spec
        assert spec is not None and spec.template == "web:worker"
        assert spec.template_revision == REVISION and spec.memory_mib == 384
