from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path

import httpx
import pytest

from backend.api.app import openapi_document
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from tests.api_helpers import Api, EventStream, running_api
from tests.fake_driver import FakeDriver
from tests.fake_exec import GatedRunner

REPO = Path(__file__).resolve().parent.parent


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"code", "message"} and body["message"]
    return response.status_code, body["code"]


async def test_socket_is_private_and_health_answers(api: Api, engine: Engine) -> None:
    sock = engine.dirs.api_socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    health = (await api.client.get("/v1/health")).json()
    assert health["status"] == "ok" and health["state_dir"] == str(engine.dirs.root)
    assert health["machines"] == 0


async def test_machine_lifecycle_through_the_api(api: Api, engine: Engine) -> None:
    c = api.client
    created = await c.post("/v1/machines", params={"start": "true"},
                           json={"name": "vm", "vcpus": 2, "memory_mib": 128})
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "ready" and created.json()["spec"]["vcpus"] == 2
    listed = (await c.get("/v1/machines")).json()
    assert [m["name"] for m in listed] == ["vm"]
    stopped = await c.post("/v1/machines/vm/stop")
    assert stopped.json()["state"] == "stopped"
    assert (await c.post("/v1/machines/vm/start")).json()["state"] == "ready"
    restarted = await c.post("/v1/machines/vm/restart")
    assert restarted.json()["state"] == "ready"
    assert api.driver.starts == {"vm": 3}
    assert error_of(await c.delete("/v1/machines/vm")) == (409, "busy")
    assert engine.projection.state_of("vm") is InstanceState.READY
    assert (await c.delete("/v1/machines/vm", params={"force": "true"})).status_code == 204
    assert error_of(await c.get("/v1/machines/vm")) == (404, "not_found")
    assert not engine.store.exists("vm")


async def test_bad_requests_change_nothing(api: Api, engine: Engine) -> None:
    c = api.client
    await c.post("/v1/machines", json={"name": "vm"})
    before = sorted(p.name for p in engine.dirs.machines.iterdir())
    log_size = engine.dirs.event_log.stat().st_size
    assert error_of(await c.post("/v1/machines", json={"name": "vm"})) == (409, "exists")
    assert error_of(await c.post("/v1/machines", json={"name": "../x"})) == \
        (422, "invalid_request")
    assert error_of(await c.post("/v1/machines", json={"name": "ok", "vcpus": 0})) == \
        (422, "invalid_request")
    assert error_of(await c.post("/v1/machines", json={"name": "ok", "typo": 1})) == \
        (422, "invalid_request")
    assert error_of(await c.post("/v1/machines", content=b"{not json",
                                 headers={"content-type": "application/json"}))[0] == 422
    assert error_of(await c.post("/v1/machines/Bad_Name/start")) == (422, "invalid_name")
    assert error_of(await c.post("/v1/machines/ghost/start")) == (404, "not_found")
    assert error_of(await c.post("/v1/machines/vm/exec", json={"argv": ["true"]})) == \
        (409, "not_running")
    assert error_of(await c.post("/v1/machines/vm/exec", json={"argv": []})) == \
        (422, "invalid_request")
    assert error_of(await c.get("/v1/nothing")) == (404, "no_such_endpoint")
    assert error_of(await c.put("/v1/machines")) == (405, "method_not_allowed")
    assert sorted(p.name for p in engine.dirs.machines.iterdir()) == before
    assert engine.dirs.event_log.stat().st_size == log_size
    assert engine.projection.state_of("vm") is InstanceState.STOPPED


async def test_exec_marks_the_machine_busy_while_in_flight(api: Api, engine: Engine,
                                                           runner: GatedRunner) -> None:
    c = api.client
    await c.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
    done = await c.post("/v1/machines/vm/exec",
                        json={"argv": ["cat"], "stdin_b64": base64.b64encode(b"hi").decode()})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["exit_code"] == 0 and base64.b64decode(body["stdout_b64"]) == b"hi"
    assert body["command"]["state"] == "succeeded" and body["command"]["request_size_bytes"]
    subscription = engine.subscribe(machine="vm")
    held = asyncio.create_task(c.post("/v1/machines/vm/exec", json={"argv": ["hold", "a"]}))
    async with asyncio.timeout(10):
        await runner.entered["a"].wait()
        # marked while the channel opens (not before it): busy while it runs
        async for event in subscription:
            if getattr(event, "type", "").endswith(".busy"):
                break
    subscription.close()
    assert engine.projection.state_of("vm") is InstanceState.BUSY
    commands = (await c.get("/v1/machines/vm/commands")).json()
    assert commands[0]["state"] == "dispatched" and commands[0]["completed_at"] is None
    assert (await c.get("/v1/health")).json()["commands_in_flight"] == 1
    runner.release("a")
    assert (await held).json()["exit_code"] == 0
    assert engine.projection.state_of("vm") is InstanceState.READY
    failing = await c.post("/v1/machines/vm/exec", json={"argv": ["false"]})
    assert failing.json()["exit_code"] == 1


async def test_event_stream_carries_every_transition(api: Api) -> None:
    async with api.client.stream("GET", "/v1/events") as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        stream = EventStream(response)
        assert (await stream.next())["type"] == "dev.boxui.stream.v1.subscribed"
        await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
        seen = await stream.until(lambda e: e["type"].endswith(".ready"))
    moves = [(e["type"].rsplit(".", 1)[1], e["data"]["from"], e["data"]["to"]) for e in seen]
    assert moves == [("creating", None, "creating"), ("created", "creating", "stopped"),
                     ("booting", "stopped", "booting"), ("ready", "booting", "ready")]
    assert all(e["subject"] == "vm" and e["specversion"] == "1.0" for e in seen)
    recent = (await api.client.get("/v1/events/recent", params={"limit": 2})).json()
    assert [e["type"].rsplit(".", 1)[1] for e in recent] == ["booting", "ready"]


async def test_event_stream_ends_when_the_server_stops(engine: Engine, driver: FakeDriver,
                                                       runner: GatedRunner) -> None:
    async with running_api(engine, driver, runner) as api:
        response = await api.client.send(api.client.build_request("GET", "/v1/events"),
                                          stream=True)
        stream = EventStream(response)
        await stream.next()
        api.ctx.closing.set()
        with pytest.raises(StopAsyncIteration):
            await stream.next()
        await response.aclose()


def test_committed_openapi_document_is_what_the_app_serves() -> None:
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == openapi_document(), \
        "docs/openapi.json is stale: run python -m backend.api.openapi_doc"
