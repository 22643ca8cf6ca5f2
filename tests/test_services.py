"""Services over the API with the fake driver: scale 0 -> 3 -> 1 -> 0 with every event
checked, drain waiting for in-flight commands, refusal above max, replacement."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from backend.services.manager import ServiceManager
from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState
from backend.supervision.machine_exec import MachineExec
from backend.supervision.supervisor import Supervisor
from tests.api_helpers import Api, EventStream
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.fake_exec import GatedRunner


def kind(event: dict[str, Any]) -> str:
    return str(event["type"]).removeprefix("dev.boxui.")


def moves_of(events: list[dict[str, Any]], instance: str) -> list[str]:
    out = []
    for e in events:
        if e.get("subject") != instance:
            continue
        if kind(e).startswith("instance."):
            out.append(f"{e['data']['from']}->{e['data']['to']}")
        else:
            out.append(kind(e))
    return out


async def scale(api: Api, replicas: int, *, wait: bool = True, rid: str = "") -> Any:
    response = await api.client.post("/v1/scale", params={"wait": wait},
                                     json={"service": "web", "replicas": replicas,
                                           "request_id": rid})
    return response


async def test_scale_0_3_1_0_with_every_event(api: Api, engine: Engine,
                                              runner: GatedRunner) -> None:
    c = api.client
    created = await c.post("/v1/services", json={"name": "web", "max_replicas": 3,
                                                  "env": {"MODE": "test"}})
    assert created.status_code == 201, created.text
    assert created.json()["current_replicas"] == 0
    async with c.stream("GET", "/v1/events") as response:
        stream = EventStream(response)
        await stream.next()
        up = await scale(api, 3, rid="up-1")
        assert up.status_code == 200, up.text
        body = up.json()
        assert body["request_id"] == "up-1" and body["accepted"] is True
        assert body["current_replicas"] == 3 and body["target_replicas"] == 3
        assert all(i["state"] == "ready" and i["endpoint"].startswith("127.0.0.1:")
                   and i["service"] == "web" for i in body["instances"])
        instances = sorted(i["id"] for i in body["instances"])
        assert len(set(instances)) == 3 and all(i.startswith("web-") for i in instances)

        refused = await scale(api, 4, rid="too-many")
        assert refused.status_code == 409
        assert refused.json()["accepted"] is False and refused.json()["target_replicas"] == 3
        assert refused.json()["error"].startswith("at maximum capacity")
        # a refused request changes nothing: the persisted desired count is still 3
        assert json.loads((engine.dirs.services / "web.json").read_text())["replicas"] == 3

        # one instance has a command in flight: scale-down must spare it
        keep = instances[0]
        held = asyncio.create_task(c.post(f"/v1/machines/{keep}/exec",
                                          json={"argv": ["hold", "k"]}))
        async with asyncio.timeout(10):
            await runner.entered["k"].wait()
        down = await scale(api, 1)
        assert [i["id"] for i in down.json()["instances"]] == [keep]
        assert down.json()["current_replicas"] == 1

        # the last one is busy: draining waits for its command before stopping it
        to_zero = asyncio.create_task(scale(api, 0))
        await stream.until(lambda e: e.get("subject") == keep
                           and e["data"].get("to") == "draining")
        assert engine.projection.state_of(keep) is InstanceState.DRAINING
        assert driver_stops(api, keep) == 0
        refused_exec = await c.post(f"/v1/machines/{keep}/exec", json={"argv": ["true"]})
        assert refused_exec.json()["code"] == "draining"
        runner.release("k")
        assert (await held).json()["exit_code"] == 0
        assert (await to_zero).json()["current_replicas"] == 0
        rest = await stream.until(lambda e: e.get("subject") == keep
                                  and kind(e) == "instance.v1.deleted")
    check_logged_story(engine, instances, keep)
    assert any(kind(e) == "instance.v1.deleted" for e in rest)
    assert (await c.get("/v1/services/web")).json()["instances"] == []
    assert engine.store.names() == []


def check_logged_story(engine: Engine, instances: list[str], keep: str) -> None:
    """The log of scaling 0 -> 3 -> 1 -> 0, with `keep` busy when it was asked to go."""
    events = [e.to_json_dict() for e in read_log(engine.dirs.event_log).events]
    for instance in instances:
        moves = moves_of(events, instance)
        assert moves[:4] == ["None->creating", "creating->booting", "booting->ready",
                             "endpoint.v1.registered"], moves
        # no instance was stopped while busy: every stop came out of a drain
        assert [m for m in moves if m.endswith("->stopping")] == ["draining->stopping"]
        assert moves[-3:] == ["draining->stopping", "stopping->stopped", "stopped->None"]
        leaving = [e for e in events if e.get("subject") == instance
                   and kind(e) == "endpoint.v1.deregistered"]
        assert [e["data"]["reason"] for e in leaving] == ["scale-down"]
        assert all(e["data"].get("service") == "web" for e in events
                   if e.get("subject") == instance)
    assert moves_of(events, keep)[4:7] == ["ready->busy", "endpoint.v1.deregistered",
                                           "busy->draining"]
    stop_msg = [e["data"]["message"] for e in events if e.get("subject") == keep
                and e["data"].get("to") == "stopping"]
    assert stop_msg == ["scale-down: drained; powering off"]
    scaled = [e["data"] for e in events if kind(e) == "service.v1.scaled"]
    assert [(d["from"], d["to"]) for d in scaled] == [(0, 3), (3, 1), (1, 0)]


def driver_stops(api: Api, name: str) -> int:
    return sum(1 for call, who in api.driver.calls if call in ("stop", "kill") and who == name)


async def test_drain_timeout_stops_the_instance_anyway(api: Api, engine: Engine,
                                                      runner: GatedRunner) -> None:
    c = api.client
    await c.post("/v1/services", params={"wait": True},
                 json={"name": "web", "replicas": 1, "drain_timeout": 0.05})
    (instance,) = [i["id"] for i in (await c.get("/v1/services/web")).json()["instances"]]
    held = asyncio.create_task(c.post(f"/v1/machines/{instance}/exec",
                                      json={"argv": ["hold", "x"]}))
    async with asyncio.timeout(10):
        await runner.entered["x"].wait()
    assert (await scale(api, 0)).json()["current_replicas"] == 0
    stopping = [e.data["message"] for e in read_log(engine.dirs.event_log).events
                if e.subject == instance and e.data.get("to") == "stopping"]
    assert stopping == ["scale-down: drain timeout after 0.05 s with 1 command(s) still "
                        "in flight; powering off"]
    runner.release("x")
    await held


async def test_a_failed_instance_is_replaced(api: Api, engine: Engine) -> None:
    c = api.client
    async with c.stream("GET", "/v1/events") as response:
        stream = EventStream(response)
        await stream.next()
        await c.post("/v1/services", params={"wait": True},
                     json={"name": "web", "replicas": 2})
        first = set(api.ctx.services.instances("web"))
        victim = sorted(first)[0]
        os.kill(api.ctx.supervisor.handles[victim].pid, signal.SIGKILL)
        seen = await stream.until(
            lambda e: kind(e) == "endpoint.v1.registered" and e["subject"] not in first)
    about = [e for e in seen if e.get("subject") == victim]
    kinds = [kind(e) for e in about]
    after = about[kinds.index("instance.v1.crashed"):]
    assert [kind(e) for e in after] == ["instance.v1.crashed", "endpoint.v1.deregistered",
                                        "instance.v1.deleted"]
    assert after[1]["data"]["reason"].startswith("crashed")
    replacing = [e for e in seen if kind(e) == "service.v1.replacing"]
    assert replacing and replacing[0]["data"]["delay"] == 1.0
    view = (await c.get("/v1/services/web")).json()
    assert view["current_replicas"] == 2 and victim not in [i["id"] for i in view["instances"]]


async def test_bad_service_requests_change_nothing(api: Api, engine: Engine) -> None:
    c = api.client
    bad = [{"name": "web", "replicas": 5, "max_replicas": 2},
           {"name": "web", "ports": [{"guest": 80, "host": 8080}], "max_replicas": 2},
           {"name": "x" * 60}, {"name": "web", "env": {"1BAD": "x"}}]
    for body in bad:
        response = await c.post("/v1/services", json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "invalid_request"
    assert (await scale(api, 1)).json()["code"] == "not_found"
    assert list(engine.dirs.services.iterdir()) == []
    await c.post("/v1/services", json={"name": "web"})
    assert (await c.post("/v1/services", json={"name": "web"})).json()["code"] == "exists"
    assert (await c.delete("/v1/services/web")).status_code == 204
    assert (await c.get("/v1/services/web")).json()["code"] == "not_found"
    assert list(engine.dirs.services.iterdir()) == []


async def test_services_start_beside_a_broken_machine(engine: Engine) -> None:
    """A machine whose machine.toml cannot be read has no spec, so no creation time: the
    services' start (the daemon's and the app's api task) must not compare it with the
    others' (TypeError: int vs datetime, which ended the app's api task)."""
    await engine.create_machine(spec("good"))
    await engine.create_machine(spec("web-1", service="web"))
    await engine.create_machine(spec("bad"))
    (engine.dirs.machine_dir("bad") / "machine.toml").write_text("not = [toml")
    sup = Supervisor(engine, FakeDriver(), FakeBootFiles(), accel_for=fixed_accel)
    async with sup.running(recover=None):
        manager = ServiceManager(sup, MachineExec(engine))
        await asyncio.wait_for(manager.start(), 10)
        assert engine.memberships == {"web-1": "web"}
