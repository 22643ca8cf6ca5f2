"""The app following a real libvirt host: a private libvirtd started here (root;
`tests/libvirt_helpers.py`) with two tiny domains no boxui made (QEMU with no guest OS:
nothing boots, so this is not a `vm` test). The app, with that host in its registry,
shows the domains with their HOST; a domain started or destroyed behind the app's back
(libvirt-python, as virsh would) changes its row by libvirt's event; libvirtd stopped
turns the rows `unknown` within 3 s; one guest killed while nobody watched, libvirtd
started again: the rows reconcile to the domains' real states."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")  # before the helpers' imports: without it, nothing here runs

import libvirt

from backend.hosts.registry import HostDef, add_host
from backend.state.state_dir import open_state_dir
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import (  # noqa: F401  (the app's fixtures)
    MakeApp,
    fake_driver,
    make_app,
    seed,
)
from tests.app.pilot_helpers import SIZE, cell, rows, started, until
from tests.libvirt_helpers import LibvirtDaemon, libvirtd_stopped, running_libvirtd

TINY = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"""
#: an event crosses libvirtd, the libvirt thread and the app's message queue
EVENT_WITHIN = 5.0


@pytest.fixture
def libvirtd() -> Iterator[LibvirtDaemon]:
    with running_libvirtd() as daemon:
        yield daemon


def _define(daemon: LibvirtDaemon, *names: str) -> None:
    conn = libvirt.open(daemon.uri)
    try:
        for name in names:
            conn.defineXML(TINY.format(name=name))
    finally:
        conn.close()


def _virsh(daemon: LibvirtDaemon, verb: str, name: str) -> None:
    """What `virsh start|destroy NAME` does, on a connection of its own."""
    conn = libvirt.open(daemon.uri)
    try:
        getattr(conn.lookupByName(name), verb)()
    finally:
        conn.close()


def _kill_guest(daemon: LibvirtDaemon, name: str) -> None:
    """The domain's QEMU killed behind libvirt's back (its pid file is libvirt's)."""
    pid = int((daemon.root / "run" / "qemu" / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)


async def test_the_app_follows_a_real_libvirt_host(
        libvirtd: LibvirtDaemon, home: Path, make_app: MakeApp,  # noqa: F811
) -> None:
    _define(libvirtd, "lv-a", "lv-b")
    _virsh(libvirtd, "create", "lv-a")
    await seed(home, "dev1")
    add_host(open_state_dir(home), HostDef(name="lab", kind="libvirt", address=libvirtd.uri))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await until(pilot, lambda: {"lv-a@lab", "lv-b@lab"} <= set(rows(app)), timeout=30)
        assert (cell(app, "lv-a@lab", "host"), cell(app, "dev1", "host")) == ("lab", "local")
        assert cell(app, "lv-a@lab", "state") == "ready"  # running, as libvirt tells it
        assert cell(app, "lv-b@lab", "state") == "stopped"
        local = dict(app.query_one(MachineTable)._rows["dev1"][0])

        _virsh(libvirtd, "create", "lv-b")
        _virsh(libvirtd, "destroy", "lv-a")
        await until(pilot, lambda: (cell(app, "lv-a@lab", "state"),
                                    cell(app, "lv-b@lab", "state")) == ("stopped", "ready"),
                    timeout=EVENT_WITHIN)

        with libvirtd_stopped(libvirtd):
            lost = time.monotonic()
            await until(pilot, lambda: cell(app, "lv-a@lab", "state") == "unknown"
                        and cell(app, "lv-b@lab", "state") == "unknown", timeout=3)
            assert time.monotonic() - lost < 3
            (snap,) = [s for s in app.fleet.snapshots() if s.name == "lab"]
            assert not snap.reachable and "lost" in (snap.reason or ""), snap.reason
            _kill_guest(libvirtd, "lv-b")  # while nobody could tell
        # started again: its guests are found as they are, and the app reconnects
        await until(pilot, lambda: cell(app, "lv-b@lab", "state") not in ("unknown", "ready")
                    and cell(app, "lv-a@lab", "state") == "stopped", timeout=30)
        assert cell(app, "lv-b@lab", "state") == "crashed", cell(app, "lv-b@lab", "state")
        assert dict(app.query_one(MachineTable)._rows["dev1"][0]) == local
