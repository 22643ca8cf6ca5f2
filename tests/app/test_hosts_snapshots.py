"""The HOST column and the hosts view as pictures: local machines beside a reachable
boxui host, a libvirt host that stopped answering (its machines `unknown`) and a plain
build host's figures. Stand-in hosts, fixed times; see test_snapshots.py for the rest
of what keeps these deterministic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from boxui.tui.app import BoxuiApp
from boxui.tui.fleet.fleet import Fleet
from boxui.tui.fleet.standin import StandinFollower
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import FIXED_TIME
from tests.app.test_snapshots import (  # noqa: F401  (fixtures)
    SIZE,
    build_app,
    driver,
    fleet,
    frozen,
    home,
    settle,
)
from tests.fake_driver import FakeDriver


def hosts() -> list[StandinFollower]:
    def machine(name: str, state: InstanceState, memory: int = 512) -> LoadedMachine:
        return LoadedMachine(name=name, state=state,
                             spec=MachineSpec(name=name, memory_mib=memory))

    build = StandinFollower("build", [machine("api", InstanceState.STOPPED),
                                      machine("ci-runner", InstanceState.STOPPED, 2048)])
    lab = StandinFollower("lab", [machine("win11", InstanceState.READY, 4096)],
                          kind="libvirt")
    ci = StandinFollower("ci", [], kind="plain")
    ci.snapshot.facts = {"load": [0.42, 0.3, 0.25],
                         "memory": {"total": 8 << 30, "used": 3 << 30},
                         "disk": {"total": 100 << 30, "used": 41 << 30},
                         "users": ["ann", "ci"]}
    return [build, lab, ci]


def with_hosts(root: Path, fake: FakeDriver) -> BoxuiApp:
    app = build_app(root, fake)
    app.fleet = Fleet(hosts())
    return app


async def partitioned(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, BoxuiApp)
    await settle(pilot, lambda: app.backend.ready.is_set() and app._mounted
                 and app.query_one(MachineTable).row_count == 8)
    lab = app.fleet.followers["lab"]
    assert isinstance(lab, StandinFollower)
    lab.partition("host lab: connection to qemu+ssh://lab/system lost: keepalive timeout")
    await settle(pilot, lambda: not lab.snapshot.reachable)
    for follower in app.fleet.followers.values():
        follower.snapshot.seen_at = FIXED_TIME - 7
    app._reconcile()
    app.clear_notifications()
    await pilot.pause(0.2)


def test_host_column(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                     snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await partitioned(pilot)
        await pilot.press("end")  # win11@lab: unknown, with the reason and last seen
        await pilot.pause(0.2)

    assert snap_compare(with_hosts(home, driver), terminal_size=SIZE, run_before=run_before)


def test_hosts_view(home: Path, driver: FakeDriver, frozen: None,  # noqa: F811
                    snap_compare: Any) -> None:
    fleet(home)

    async def run_before(pilot: Pilot[None]) -> None:
        await partitioned(pilot)
        await pilot.press("H")
        await pilot.pause(0.3)

    assert snap_compare(with_hosts(home, driver), terminal_size=SIZE, run_before=run_before)
