"""`boxui service ...` against a fake-driver daemon, and a daemon killed mid-scale."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from backend.state.state_dir import open_state_dir
from tests.daemon_helpers import Daemon, boxui, daemon_running, kill_stand_ins, machines
from tests.fake_daemon import BOOT_DELAY_ENV


@pytest.fixture
def home(home: Path) -> Iterator[Path]:
    yield home
    kill_stand_ins(home)


def stand_in_pids(home: Path) -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(home) in a for a in p.info["cmdline"] or [])
            and "time.sleep" in " ".join(p.info["cmdline"] or [])}


def test_service_commands_through_the_daemon(home: Path) -> None:
    with daemon_running(home):
        created = boxui(home, "service", "create", "web", "--replicas", "2", "--max", "3",
                        "--env", "MODE=test", "--port", "80", "--json")
        assert created.returncode == 0, created.stderr
        view = json.loads(created.stdout)
        assert view["current_replicas"] == 2 and view["spec"]["env"] == {"MODE": "test"}
        listed = boxui(home, "service", "ls").stdout.splitlines()
        assert listed[0].split() == ["NAME", "DESIRED", "READY", "MAX", "INSTANCES"]
        assert listed[1].split()[:4] == ["web", "2", "2", "3"]
        refused = boxui(home, "service", "scale", "web", "4")
        assert refused.returncode == 1
        assert refused.stderr.startswith("boxui: scale refused: at maximum capacity")
        assert "(target 3)" in refused.stderr
        up = boxui(home, "service", "scale", "web", "3", "--request-id", "r1")
        assert up.stdout.strip() == "web: 3/3 ready (request r1)"
        assert len(machines(home)) == 3
        assert boxui(home, "service", "scale", "web", "1").stdout.startswith("web: 1/1")
        assert boxui(home, "service", "rm", "web").stdout.strip() == "removed service web"
        assert machines(home) == {}
        assert boxui(home, "service", "ls").stdout.strip() == "no services yet"
        bad = boxui(home, "service", "create", "web", "--replicas", "5", "--max", "2")
        assert bad.returncode == 2 and "above max_replicas" in bad.stderr
        assert boxui(home, "service", "scale", "nope", "1").stderr.strip() == \
            "boxui: no service named 'nope'"


def _client(home: Path) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(open_state_dir(home).api_socket))
    return httpx.Client(transport=transport, base_url="http://boxui", timeout=30)


def _events_until(home: Path, predicate: Any, before: Any = None) -> list[dict[str, Any]]:
    """Open the event stream, run `before`, and read until `predicate` holds."""
    seen: list[dict[str, Any]] = []
    with _client(home) as client, client.stream("GET", "/v1/events") as response:
        lines = response.iter_lines()
        assert "subscribed" in next(lines)
        if before is not None and before():
            return seen
        for line in lines:
            seen.append(json.loads(line))
            if predicate(seen):
                return seen
    raise AssertionError("event stream ended")


def test_daemon_killed_mid_scale_recovers_to_the_desired_count(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_DELAY_ENV, "600")  # guests never get ready under this daemon
    daemon = Daemon(home)
    try:
        assert boxui(home, "service", "create", "web", "--replicas", "0").returncode == 0
        booting = lambda seen: any(e["data"].get("to") == "booting" for e in seen)  # noqa: E731
        _events_until(home, booting, before=lambda: boxui(
            home, "service", "scale", "web", "3", "--no-wait").returncode != 0)
        # "booting" is logged just before the stand-in is spawned: kill after the spawn
        deadline = time.monotonic() + 10
        while not stand_in_pids(home) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        daemon.kill()
    before = stand_in_pids(home)
    assert 1 <= len(before) <= 3
    monkeypatch.delenv(BOOT_DELAY_ENV)
    with daemon_running(home):
        def ready() -> bool:
            with _client(home) as client:
                return bool(client.get("/v1/services/web").json()["current_replicas"] == 3)

        _events_until(home, lambda seen: ready(), before=ready)
        view = json.loads(boxui(home, "service", "ls", "--json").stdout)[0]
    assert view["spec"]["replicas"] == 3 and view["current_replicas"] == 3
    ids = [i["id"] for i in view["instances"]]
    assert len(ids) == 3 == len(set(ids)) and all(i["state"] == "ready"
                                                  for i in view["instances"])
    after = stand_in_pids(home)
    assert before <= after and len(after) == 3  # re-adopted, never started twice
    assert set(machines(home)) == set(ids)
