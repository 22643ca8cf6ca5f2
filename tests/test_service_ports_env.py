"""A service's published ports and environment reach its instances."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from backend.state.engine import Engine
from backend.supervision.machine_exec import argv_with_env
from tests.api_helpers import Api, running_api
from tests.fake_driver import FakeDriver
from tests.fake_exec import host_exec_runner


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[Api]:
    driver = FakeDriver()
    try:
        async with running_api(engine, driver, host_exec_runner) as running:
            yield running
    finally:
        driver.kill_all()


def test_argv_with_env_passes_values_as_data() -> None:
    assert argv_with_env(["true"], {}) == ["true"]
    assert argv_with_env(["sh", "-c", "x"], {"B": "2", "A": "$(no)"}) == \
        ["env", "A=$(no)", "B=2", "sh", "-c", "x"]


async def test_instances_publish_ports_and_get_the_env(api: Api, engine: Engine) -> None:
    c = api.client
    body = {"name": "web", "replicas": 2, "ports": [{"guest": 80}],
            "env": {"MODE": "test; rm -rf /"}}
    view = (await c.post("/v1/services", params={"wait": True}, json=body)).json()
    endpoints = []
    for inst in view["instances"]:
        record = engine.store.load_record(inst["id"])
        host_port = record.ports["80"]
        assert host_port != record.ssh_port
        assert inst["endpoint"] == f"127.0.0.1:{host_port}"
        endpoints.append(host_port)
        spec = engine.store.load_spec(inst["id"])
        assert spec.env == body["env"] and spec.service == "web"
        out = await c.post(f"/v1/machines/{inst['id']}/exec",
                           json={"argv": ["sh", "-c", "printf %s \"$MODE\""]})
        assert base64.b64decode(out.json()["stdout_b64"]) == b"test; rm -rf /"
    assert len(set(endpoints)) == 2
