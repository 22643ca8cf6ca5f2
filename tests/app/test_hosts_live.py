"""Other hosts while the app runs, through Pilot with stand-in hosts: hosts added and
removed with `boxui host add|rm` (the registry is watched, not polled), the header's
counts over every host, a boxui host's past events, and the table fitting 150 columns
with the HOST column."""

from __future__ import annotations

import uuid
from pathlib import Path

from backend.hosts.registry import HostDef, add_host, hosts_path, remove_host
from backend.state.events import CloudEvent, now_utc
from backend.state.lifecycle import InstanceState
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir
from boxui.tui.app import BoxuiApp
from boxui.tui.fleet.fleet import Fleet
from boxui.tui.fleet.follower import Follower
from boxui.tui.fleet.standin import StandinFollower
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import COLUMNS, HOST_COLUMNS, MachineTable
from boxui.tui.widgets.status_header import StatusHeader
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, cell, rows, started, until
from tests.app.test_hosts import machines, notified, running


def header(app: BoxuiApp) -> str:
    return str(app.query_one(StatusHeader).render())


def event(name: str, to: str) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source="standin/build",
                      type=f"dev.boxui.instance.v1.{to}", time=now_utc(), subject=name,
                      data={"machine": name, "from": None, "to": to, "message": "past"})


def shown_ids(app: BoxuiApp) -> list[str]:
    return [e.id for e, _ in app.query_one(EventStream).history if e is not None]


async def test_hosts_added_and_removed_while_the_app_runs(
        home: Path, make_app: MakeApp) -> None:
    await seed(home, "db")
    made: list[StandinFollower] = []

    def make(host: HostDef) -> Follower:
        made.append(StandinFollower(host.name, machines(web=InstanceState.READY)))
        return made[-1]

    app = make_app(fleet=Fleet(registry=home, make=make))
    dirs = StateDir(home)
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        table = app.query_one(MachineTable)
        assert rows(app) == ["db"] and table.columns == COLUMNS
        add_host(dirs, HostDef(name="build", kind="boxui", address="ssh://build"))
        await until(pilot, lambda: "web@build" in rows(app), timeout=5)
        assert table.columns == HOST_COLUMNS
        assert cell(app, "web@build", "state") == "ready"
        add_host(dirs, HostDef(name="lab", kind="boxui", address="ssh://lab"))
        await until(pilot, lambda: sorted(rows(app)) == ["db", "web@build", "web@lab"],
                    timeout=5)
        remove_host(dirs, "build")
        await until(pilot, lambda: sorted(rows(app)) == ["db", "web@lab"], timeout=5)
        assert app.fleet.hosts == ["lab"]
        # a broken hand edit is said, and what is followed stays
        hosts_path(dirs).write_text("[hosts.x]\nkind = 'nope'\n")
        await until(pilot, lambda: notified(app, "hosts.toml"), timeout=5)
        assert sorted(rows(app)) == ["db", "web@lab"]
        hosts_path(dirs).unlink()  # the last host gone: the file with it
        await until(pilot, lambda: rows(app) == ["db"], timeout=5)
        assert table.columns == COLUMNS
        assert [f.name for f in made] == ["build", "lab"], "each host followed once"


async def test_the_header_counts_every_hosts_machines(
        home: Path, make_app: MakeApp) -> None:
    await seed(home, "db")
    build = StandinFollower("build", machines(web=InstanceState.READY,
                                              ci=InstanceState.STOPPED))
    async with running(make_app, build, expect=3) as (pilot, app):
        await until(pilot, lambda: "3 machines on 2 hosts" in header(app))
        assert "1 ready" in header(app) and "2 stopped" in header(app)
        build.partition("host build stopped answering")
        await until(pilot, lambda: "2 unknown" in header(app), timeout=3)
        assert "1 stopped" in header(app) and "ready" not in header(app)
        build.heal()
        await until(pilot, lambda: "1 ready" in header(app))


async def test_a_hosts_past_events_are_shown_once(home: Path, make_app: MakeApp) -> None:
    past = [event("web", "ready"), event("web", "stopped")]
    build = StandinFollower("build", machines(web=InstanceState.STOPPED), events=past)
    async with running(make_app, build, expect=1) as (pilot, app):
        await until(pilot, lambda: shown_ids(app) == [e.id for e in past])
        stream = app.query_one(EventStream)
        assert all(e is not None and e.subject == "web@build" for e, _ in stream.history
                   if e is not None and e.source.startswith("standin"))
        build.change("web", InstanceState.READY)  # live
        await until(pilot, lambda: len(shown_ids(app)) == 3)
        build.partition("host build stopped answering")
        await until(pilot, lambda: cell(app, "web@build", "state") == "unknown")
        build.change("web", InstanceState.STOPPED)  # while nobody could see it
        build.heal()
        await until(pilot, lambda: cell(app, "web@build", "state") == "stopped")
        await until(pilot, lambda: len(shown_ids(app)) == 4)
        await pilot.pause(0.3)
        ids = shown_ids(app)
        assert ids == [e.id for e in build.log], "each once, in the host's order"


async def test_the_table_fits_150_columns_with_hosts(home: Path, make_app: MakeApp) -> None:
    many = [LoadedMachine(name=f"m{i:03d}", state=InstanceState.READY) for i in range(60)]
    build = StandinFollower("buildserver01", many)  # more rows than fit: a scrollbar
    async with running(make_app, build, expect=60) as (pilot, app):
        table = app.query_one(MachineTable)
        await pilot.pause(0.2)
        assert table.max_scroll_y > 0
        assert table.virtual_size.width <= table.scrollable_content_region.width
        assert table.max_scroll_x == 0, "nothing scrolls off to the right"
        head = table.render_line(0).text
        assert all(c.label in head for c in HOST_COLUMNS)
        line = table.render_line(1).text
        assert "builds…" in line and cell(app, "m000@buildserver01", "host") == \
            "buildserver01", "cut where it is drawn, whole where it is read"
