"""The app following a real libvirt host: a private libvirtd started here (root;
`tests/libvirt_helpers.py`) with two tiny domains no boxui made (QEMU with no guest OS:
nothing boots, so this is not a `vm` test). The app, with that host in its registry,
shows the domains with their HOST (a boxui domain another process booted turns
`ready` when its console says so); a domain started or destroyed behind the app's back
(libvirt-python, as virsh would) changes its row by libvirt's event; libvirtd stopped
turns the rows `unknown` within 3 s; one guest killed while nobody watched, libvirtd
started again: the rows reconcile to the domains' real states; a row's start goes to
libvirt."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")  # before the helpers' imports: without it, nothing here runs

import libvirt

from backend.guest.guest_files import READY_MARKER
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
from tests.app.test_hosts import select
from tests.libvirt_helpers import LibvirtDaemon, libvirtd_stopped, running_libvirtd

TINY = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"""
#: a domain as boxui marks its own (`domain_xml`), with nothing in it to boot: its
#: console log is written by virtlogd, and by the test in its guest's place
MARKED = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>
<metadata><boxui:machine xmlns:boxui='https://boxui.dev/xmlns/libvirt/machine/1'>
<boxui:name>{name}</boxui:name><boxui:boot-id>{boot_id}</boxui:boot-id>
<boxui:ssh-port>2222</boxui:ssh-port></boxui:machine></metadata>
<os><type arch='x86_64' machine='q35'>hvm</type></os>
<devices><serial type='pty'><log file='{log}' append='on'/><target port='0'/></serial>
</devices></domain>"""
BOOT_ID = "b0071d0000000001"
#: an event crosses libvirtd, the libvirt thread and the app's message queue
EVENT_WITHIN = 5.0
#: a console is read with each health sample (1 s) while its domain shows booting
READY_WITHIN = 10.0


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
        libvirtd: LibvirtDaemon, home: Path, tmp_path: Path,
        make_app: MakeApp,  # noqa: F811
) -> None:
    _define(libvirtd, "lv-a", "lv-b")
    _virsh(libvirtd, "create", "lv-a")
    console = tmp_path / "lv-c.console.log"
    conn = libvirt.open(libvirtd.uri)
    try:
        conn.defineXML(MARKED.format(name="lv-c", boot_id=BOOT_ID, log=console)).create()
    finally:
        conn.close()
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
        # boxui's, booted by another process: ready only once its console says so
        assert cell(app, "lv-c@lab", "state") == "booting"
        with console.open("a") as log:
            log.write(f"{READY_MARKER} {BOOT_ID}\n")  # what the guest prints
        await until(pilot, lambda: cell(app, "lv-c@lab", "state") == "ready",
                    timeout=READY_WITHIN)

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
            assert cell(app, "lv-c@lab", "state") == "unknown"
            _kill_guest(libvirtd, "lv-b")  # while nobody could tell
        # started again: its guests are found as they are, and the app reconnects
        await until(pilot, lambda: cell(app, "lv-b@lab", "state") not in ("unknown", "ready")
                    and cell(app, "lv-a@lab", "state") == "stopped", timeout=30)
        assert cell(app, "lv-b@lab", "state") == "crashed", cell(app, "lv-b@lab", "state")
        await until(pilot, lambda: cell(app, "lv-c@lab", "state") == "ready",
                    timeout=READY_WITHIN)
        assert dict(app.query_one(MachineTable)._rows["dev1"][0]) == local
        app.query_one(MachineTable).focus()
        await select(pilot, app, "lv-a@lab")
        await pilot.press("s")  # the row's host acts: libvirt starts it
        await until(pilot, lambda: cell(app, "lv-a@lab", "state") == "ready",
                    timeout=EVENT_WITHIN)
