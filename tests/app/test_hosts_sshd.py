"""The app following a remote boxui through a real sshd started here, whose login runs
a stand-in daemon's boxui (as tests/test_hosts_remote.py): the remote machines show with
their HOST; a remote row's start goes to that host; then a partition (the sshd stopped
with the sessions it forked): within 3 s the remote rows show `unknown` with the reason,
the local ones never change; sshd started again on the same port: they reconcile."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backend.hosts.registry import HostDef, add_host
from backend.state.state_dir import open_state_dir
from boxui.tui.app import BoxuiApp
from boxui.tui.widgets.detail_pane import DetailPane
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, cell, rows, started, until
from tests.daemon_helpers import boxui, daemon_running
from tests.sshd_helpers import Sshd, remote_boxui_sshd


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with remote_boxui_sshd(tmp_path) as server:
        yield server


def partition(sshd: Sshd) -> None:
    """Stop the sshd and every session it forked: the host is gone, as a cut cable or
    a dead host would leave it (the remote daemon itself runs on)."""
    assert sshd.proc is not None
    forked = psutil.Process(sshd.proc.pid).children(recursive=True)
    sshd.stop()
    for proc in forked:
        if proc.is_running():
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(forked, timeout=10)


def remote_event_ids(app: BoxuiApp) -> list[str]:
    return [e.id for e, _ in app.query_one(EventStream).history
            if e is not None and e.subject == "dev1@r1"]


async def test_partition_and_reconcile_through_a_real_sshd(
        sshd: Sshd, home: Path, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(home, "dev1")
    add_host(open_state_dir(home), HostDef(name="r1", kind="boxui", address=sshd.address,
                                           identity=str(sshd.identity)))
    # asyncssh reads ~/.ssh (known_hosts with the test's host key pinned) from HOME
    monkeypatch.setenv("HOME", str(sshd.client_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with daemon_running(sshd.remote_home):
        made = boxui(sshd.remote_home, "create", "dev1", "--no-start")
        assert made.returncode == 0, made.stderr
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot, app)
            await until(pilot, lambda: "dev1@r1" in rows(app), timeout=60)
            assert (cell(app, "dev1@r1", "host"), cell(app, "dev1", "host")) == ("r1", "local")
            assert cell(app, "dev1@r1", "state") == "stopped"
            # its past (the create, before the app opened) is loaded, tagged with the host
            await until(pilot, lambda: remote_event_ids(app) != [], timeout=5)
            app.query_one(MachineTable).focus()
            await pilot.press("end")  # dev1@r1 sorts after the local dev1
            assert app.selected == "dev1@r1"
            await pilot.press("s")
            await until(pilot, lambda: cell(app, "dev1@r1", "state") == "ready", timeout=30)
            local = dict(app.query_one(MachineTable)._rows["dev1"][0])

            partition(sshd)
            lost = time.monotonic()
            await until(pilot, lambda: cell(app, "dev1@r1", "state") == "unknown", timeout=3)
            assert time.monotonic() - lost < 3
            text = app.query_one(DetailPane)._text
            assert "stopped answering" in text and "last seen" in text, text
            assert dict(app.query_one(MachineTable)._rows["dev1"][0]) == local

            sshd.start()  # the same port, the same host key
            await until(pilot, lambda: cell(app, "dev1@r1", "state") == "ready", timeout=30)
            assert dict(app.query_one(MachineTable)._rows["dev1"][0]) == local
            assert "dev1" in rows(app)
            ids = remote_event_ids(app)
            assert len(ids) == len(set(ids)), "the past loaded again shows nothing twice"
