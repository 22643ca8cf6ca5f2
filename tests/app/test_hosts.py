"""Many hosts in one app, driven through Pilot with stand-in hosts (in-process
followers fed by the test): the HOST column and row keys, `unknown` on a partition and
the reconcile after it, the host filter and switcher, actions routed to a row's host,
and events tagged with their host. The real SSH path is test_hosts_sshd.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from textual.pilot import Pilot

from backend.hosts.registry import HostDef
from backend.state.lifecycle import InstanceState
from backend.state.machine_store import LoadedMachine
from boxui.tui.app import BoxuiApp
from boxui.tui.fleet.fleet import Fleet
from boxui.tui.fleet.follower import Follower, ssh_argv
from boxui.tui.fleet.snapshot import split_host_filter, split_key, with_host_filter
from boxui.tui.fleet.standin import StandinFollower
from boxui.tui.screens.hosts import HostsScreen
from boxui.tui.widgets.detail_pane import DetailPane
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import COLUMNS, MachineTable
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, cell, rows, started, until


def machines(**states: InstanceState) -> list[LoadedMachine]:
    return [LoadedMachine(name=name, state=state) for name, state in states.items()]


def notified(app: object, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)  # type: ignore[attr-defined]


@asynccontextmanager
async def running(make_app: MakeApp, *hosts: StandinFollower,
                  expect: int) -> AsyncIterator[tuple[Pilot[None], BoxuiApp]]:
    """The app following these stand-in hosts, once it shows `expect` rows."""
    app = make_app(fleet=Fleet(list(hosts)))
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await until(pilot, lambda: len(rows(app)) == expect)
        yield pilot, app


def build_and_lab(web: InstanceState, on_lab: str) -> tuple[StandinFollower, StandinFollower]:
    """A boxui host `build` with `web`, a libvirt host `lab` with a stopped `on_lab`."""
    return (StandinFollower("build", machines(web=web)),
            StandinFollower("lab", machines(**{on_lab: InstanceState.STOPPED}),
                            kind="libvirt"))


async def select(pilot: Pilot[None], app: BoxuiApp, key: str) -> None:
    await pilot.press("home")
    for _ in range(len(rows(app))):
        if app.selected == key:
            return
        await pilot.press("down")
    raise AssertionError(f"no row {key}")


def detail_text(app: object) -> str:
    return app.query_one(DetailPane)._text  # type: ignore[attr-defined, no-any-return]


async def test_remote_rows_go_unknown_on_a_partition_and_reconcile(
        home: Path, make_app: MakeApp) -> None:
    await seed(home, "dev1")
    build = StandinFollower("build", machines(dev1=InstanceState.READY,
                                              web=InstanceState.STOPPED))
    async with running(make_app, build, expect=3) as (pilot, app):
        assert sorted(rows(app)) == ["dev1", "dev1@build", "web@build"]
        table = app.query_one(MachineTable)
        assert [c.key for c in table.columns][:2] == ["name", "host"]
        assert (cell(app, "dev1@build", "host"), cell(app, "dev1@build", "name"),
                cell(app, "dev1", "host")) == ("build", "dev1", "local")
        local_before = dict(table._rows["dev1"][0])
        build.partition("host build (ssh://build) stopped answering")
        lost = time.monotonic()
        await until(pilot, lambda: cell(app, "dev1@build", "state") == "unknown", timeout=3)
        assert time.monotonic() - lost < 3
        assert cell(app, "web@build", "state") == "unknown"
        await select(pilot, app, "dev1@build")
        await until(pilot, lambda: "stopped answering" in detail_text(app))
        assert "last seen" in detail_text(app)
        build.change("web", InstanceState.READY)  # while nobody could see it
        build.heal()
        await until(pilot, lambda: cell(app, "web@build", "state") == "ready")
        assert cell(app, "dev1@build", "state") == "ready"
        assert dict(table._rows["dev1"][0]) == local_before, "nothing local changed"


async def test_no_other_host_no_host_column(home: Path, make_app: MakeApp) -> None:
    await seed(home, "web")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert app.query_one(MachineTable).columns == COLUMNS
        assert rows(app) == ["web"]


async def test_host_filter_and_the_switcher(home: Path, make_app: MakeApp) -> None:
    await seed(home, "db")
    async with running(make_app, *build_and_lab(InstanceState.READY, "web"),
                       expect=3) as (pilot, app):
        await pilot.press("slash")
        app.query_one("#filter").value = "host:build"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await until(pilot, lambda: rows(app) == ["web@build"])
        await pilot.press("slash")
        app.query_one("#filter").value = "host:lab"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await until(pilot, lambda: rows(app) == ["web@lab"])
        # the switcher: H, then enter on a host
        await pilot.press("H")
        await until(pilot, lambda: isinstance(app.screen, HostsScreen))
        screen = app.screen
        assert isinstance(screen, HostsScreen)
        table = screen.query_one("#hosts")
        keys = [str(k.value) for k in table.rows]  # type: ignore[attr-defined]
        assert keys == ["all", "local", "build", "lab"]
        await pilot.press("down")  # local
        await pilot.press("enter")
        await until(pilot, lambda: rows(app) == ["db"])
        assert app.filters["machines"] == "host:local"
        await pilot.press("H")
        await until(pilot, lambda: isinstance(app.screen, HostsScreen))
        await pilot.press("escape")  # clears it
        await until(pilot, lambda: len(rows(app)) == 3)
        assert app.filters["machines"] == ""
        await pilot.press("colon")
        await pilot.press(*"hosts", "enter")
        await until(pilot, lambda: isinstance(app.screen, HostsScreen))


async def test_actions_go_to_the_rows_host(home: Path, make_app: MakeApp) -> None:
    await seed(home, "web")
    build, lab = build_and_lab(InstanceState.STOPPED, "vm")
    async with running(make_app, build, lab, expect=3) as (pilot, app):
        await select(pilot, app, "web@build")
        await pilot.press("s")
        await until(pilot, lambda: cell(app, "web@build", "state") == "ready")
        assert build.acted == [("start", "web")]
        assert cell(app, "web", "state") == "stopped", "the local web was not started"
        events = app.query_one(EventStream)
        assert any(e is not None and e.subject == "web@build" for e, _ in events.history)
        await pilot.press("e")  # editing a remote machine's spec is not offered
        await until(pilot, lambda: notified(app, "not offered"))
        await select(pilot, app, "vm@lab")
        await pilot.press("S")
        await until(pilot, lambda: notified(app, "SSH is not offered for a libvirt host"))
        lab.partition("host lab: connection to qemu+ssh://lab/system lost: keepalive timeout")
        await until(pilot, lambda: cell(app, "vm@lab", "state") == "unknown")
        await pilot.press("s")
        await until(pilot, lambda: notified(app, "host lab is unreachable"))
        assert lab.acted == []


def test_session_argv_and_filters() -> None:
    host = HostDef(name="build", kind="boxui", address="ssh://ann@build.example:2222",
                   identity="/keys/id")
    assert ssh_argv(host, ["boxui", "ssh", "web"]) == [
        "ssh", "-t", "-p", "2222", "-i", "/keys/id", "--", "ann@build.example",
        "boxui", "ssh", "web"]
    assert split_key("web@build") == ("web", "build")
    assert split_key("web") == ("web", "local")
    assert split_host_filter("host:build !~^db") == ("build", "!~^db")
    assert with_host_filter("host:build web", "lab") == "host:lab web"
    assert with_host_filter("host:build web", None) == "web"


async def test_reconnects_back_off_instead_of_polling() -> None:
    tries: list[float] = []

    class Down(Follower):
        async def follow(self) -> None:
            tries.append(time.monotonic())
            raise OSError("connection refused")

    follower = Down(HostDef(name="gone", kind="plain", address="ssh://gone"), Path("."))
    task = asyncio.create_task(follower.run())
    await asyncio.sleep(1.7)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(tries) == 3, "tries at 0, 0.5 and 1.5 s: a doubling back-off"
    assert follower.snapshot.reason == "OSError: connection refused"
    assert not follower.snapshot.reachable
