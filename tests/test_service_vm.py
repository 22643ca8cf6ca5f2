"""A service scaled 0 -> 3 -> 1 -> 0 with real QEMU guests under a real `boxui daemon`:
every instance's events are checked, and the one busy with a command is drained only
after the command finished (it is released over SSH, outside boxui's accounting)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx

from backend.guest.machine_seed import load_machine_keys
from backend.state.state_dir import open_state_dir
from backend.supervision.ssh_access import exec_command
from tests.vm_helpers import VM_MARKS, boxui, qemu_pids, start_daemon

pytestmark = VM_MARKS

WAIT_FOR_GO = "while [ ! -e /tmp/go ]; do sleep 0.2; done; echo released"


class Events:
    """Follows the daemon's event stream in a thread."""

    def __init__(self, home: Path) -> None:
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._sock = str(open_state_dir(home).api_socket)
        self._subscribed = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._subscribed.wait(30)

    def _run(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the daemon went away: stream over
            self._follow()

    def _follow(self) -> None:
        transport = httpx.HTTPTransport(uds=self._sock)
        with httpx.Client(transport=transport, base_url="http://boxui", timeout=None) as c, \
                c.stream("GET", "/v1/events") as response:
            for line in response.iter_lines():
                event = json.loads(line)
                if event["type"].endswith("stream.v1.subscribed"):
                    self._subscribed.set()
                    continue
                with self._cond:
                    self.items.append(event)
                    self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 300) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: any(predicate(e) for e in self.items), timeout)


def api(home: Path, method: str, path: str, **kw: Any) -> Any:
    transport = httpx.HTTPTransport(uds=str(open_state_dir(home).api_socket))
    with httpx.Client(transport=transport, base_url="http://boxui", timeout=None) as c:
        return c.request(method, path, **kw).json()


def test_service_scales_0_3_1_0_with_real_guests(vm_home: Path) -> None:
    home = vm_home
    daemon = start_daemon(home)
    try:
        events = Events(home)
        created = boxui(home, "service", "create", "web", "--replicas", "0", "--max", "3",
                        "--memory", "128", "--env", "ROLE=web")
        assert created.returncode == 0, created.stderr
        up = json.loads(boxui(home, "service", "scale", "web", "3", "--json").stdout)
        assert up["accepted"] and up["current_replicas"] == 3, up
        instances = sorted(i["id"] for i in up["instances"])
        assert len(qemu_pids(home)) == 3
        busy_one = instances[0]
        role = boxui(home, "exec", busy_one, "--", "sh", "-c", "echo $ROLE")
        assert role.stdout.strip() == "web", role.stderr

        held: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: held.update(api(
            home, "POST", f"/v1/machines/{busy_one}/exec",
            json={"argv": ["sh", "-c", WAIT_FOR_GO]})))
        worker.start()
        events.wait_for(lambda e: e.get("subject") == busy_one
                        and e["data"].get("to") == "busy")
        down = json.loads(boxui(home, "service", "scale", "web", "1", "--json").stdout)
        assert [i["id"] for i in down["instances"]] == [busy_one]  # busy: drained last

        scaler = threading.Thread(target=lambda: boxui(home, "service", "scale", "web", "0"))
        scaler.start()
        events.wait_for(lambda e: e.get("subject") == busy_one
                        and e["data"].get("to") == "draining")
        assert not any(e.get("subject") == busy_one and e["data"].get("to") == "stopping"
                       for e in events.items)
        machine_dir = open_state_dir(home).machine_dir(busy_one)
        port = json.loads(boxui(home, "info", busy_one, "--json").stdout)["record"]["ssh_port"]
        out, err = io.BytesIO(), io.BytesIO()
        code = asyncio.run(exec_command(port, load_machine_keys(machine_dir), machine_dir,
                                        ["touch", "/tmp/go"], out, err))
        assert code == 0, err.getvalue()
        worker.join(60)
        scaler.join(120)
        assert not worker.is_alive() and not scaler.is_alive()
        assert held["exit_code"] == 0 and "released" in str(held)
        events.wait_for(lambda e: e.get("subject") == busy_one
                        and e["type"].endswith("instance.v1.deleted"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert qemu_pids(home) == []
    log = [json.loads(line) for line in
           boxui(home, "events", "--json").stdout.splitlines()]
    for instance in instances:
        mine = [e for e in log if e.get("subject") == instance]
        moves = [f"{e['data']['from']}->{e['data']['to']}" if ".instance." in e["type"]
                 else e["type"].rsplit(".", 1)[1] for e in mine]
        assert moves[:4] == ["None->creating", "creating->booting", "booting->ready",
                             "registered"], moves
        stops = [m for m in moves if m.endswith("->stopping")]
        assert stops == ["draining->stopping"], moves  # never stopped while busy
        assert moves[-3:] == ["draining->stopping", "stopping->stopped", "stopped->None"]
        reasons = [e["data"]["reason"] for e in mine if e["type"].endswith("deregistered")]
        assert reasons == ["scale-down"]
    busy_moves = [e["data"].get("to") for e in log if e.get("subject") == busy_one
                  and ".instance." in e["type"]]
    # busy once for the `echo $ROLE` exec, then busy with the held command until drained
    assert busy_moves[2:] == ["ready", "busy", "ready", "busy", "draining", "stopping",
                              "stopped", None], busy_moves
    stopping = [e["data"]["message"] for e in log if e.get("subject") == busy_one
                and e["data"].get("to") == "stopping"]
    assert stopping == ["scale-down: drained; powering off"]


def test_daemon_killed_mid_scale_with_real_guests(vm_home: Path) -> None:
    home = vm_home
    daemon = start_daemon(home)
    try:
        assert boxui(home, "service", "create", "web", "--replicas", "0",
                     "--memory", "128").returncode == 0
        events = Events(home)
        assert boxui(home, "service", "scale", "web", "2", "--no-wait").returncode == 0
        events.wait_for(lambda e: e["data"].get("to") == "booting")
    finally:
        daemon.kill()
        daemon.wait(30)
    # pids recorded by the killed daemon (a QEMU still daemonizing may not be recorded yet)
    before = {m["record"]["pid"] for m in json.loads(boxui(home, "ls", "--json").stdout)
              if m["record"] and m["record"]["pid"]}
    assert len(before) <= 2
    daemon = start_daemon(home)
    try:
        settled = json.loads(boxui(home, "service", "scale", "web", "2", "--json").stdout)
        assert settled["accepted"], settled
        events = Events(home)
        ready = json.loads(boxui(home, "service", "ls", "--json").stdout)[0]
        if ready["current_replicas"] < 2:  # a boot that was in progress is still finishing
            events.wait_for(lambda e: e["type"].endswith("endpoint.v1.registered")
                            and json.loads(boxui(home, "service", "ls", "--json").stdout)[0]
                            ["current_replicas"] == 2)
        view = json.loads(boxui(home, "service", "ls", "--json").stdout)[0]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert view["current_replicas"] == 2 and len(view["instances"]) == 2
    after = {m["record"]["pid"] for m in json.loads(boxui(home, "ls", "--json").stdout)}
    assert set(qemu_pids(home)) == after and len(after) == 2  # no stray or duplicate QEMU
    assert before <= after  # re-adopted, never booted twice
    assert boxui(home, "service", "rm", "web").returncode == 0
    assert qemu_pids(home) == []
