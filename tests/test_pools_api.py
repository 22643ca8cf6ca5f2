"""`/v1/pools`, and the API's starts that claim a member: `POST /v1/machines?start=true`,
a cell (`boxui run --template`) and a service scaling up; `boxui pool` on the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.pools.manager import PoolManager
from backend.state.engine import Engine
from tests.api_helpers import Api, running_api
from tests.conftest import BOXUI, cli_env
from tests.fake_exec import GatedRunner
from tests.templates.helpers import SnapshotDriver, fabricate, snapshot_info
from tests.test_cells_api import run_cell
from tests.test_pools import Warmed, until

REF = "web:worker"


@pytest.fixture
async def snap_api(engine: Engine) -> AsyncIterator[Api]:
    driver = SnapshotDriver()
    try:
        async with running_api(engine, driver, GatedRunner()) as api:
            api.ctx.pools.warm = Warmed()
            await api.ctx.pools.start()
            yield api
    finally:
        driver.kill_all()


def ready(pools: PoolManager) -> int:
    return len(pools.members)


async def test_pools_are_set_and_listed(snap_api: Api, engine: Engine) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    client = snap_api.client
    answer = await client.put("/v1/pools/web", json={"size": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["template"] == REF and answer.json()["size"] == 2
    await until(lambda: ready(snap_api.ctx.pools) == 2, "two members warm")
    report = (await client.get("/v1/pools")).json()
    assert report["memory_used_mib"] == 512
    (view,) = report["pools"]
    assert (view["template"], view["size"], view["source"], view["ready"]) == (REF, 2, "set", 2)
    missing = await client.put("/v1/pools/nope:worker", json={"size": 1})
    assert missing.status_code == 404 and "nope" in missing.json()["message"]
    too_many = await client.put("/v1/pools/web:worker", json={"size": 999})
    assert too_many.status_code == 422
    listed = (await client.get("/v1/machines")).json()
    assert listed == [] or all(not m["name"].startswith("pool-") for m in listed)


async def test_an_image_template_is_refused(snap_api: Api, engine: Engine) -> None:
    fabricate(engine.dirs)
    answer = await snap_api.client.put("/v1/pools/web:worker", json={"size": 1})
    assert answer.status_code == 409 and answer.json()["code"] == "pool", answer.text


async def test_create_and_a_cell_claim_members(snap_api: Api, engine: Engine) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    await snap_api.client.put("/v1/pools/web:worker", json={"size": 1})
    await until(lambda: ready(snap_api.ctx.pools) == 1, "a member warm")
    from backend.templates.machine_from_template import spec_from_template

    spec = spec_from_template(engine.dirs, "api1", REF).model_dump(mode="json")
    made = await snap_api.client.post("/v1/machines", params={"start": "true"}, json=spec)
    assert made.status_code == 201, made.text
    assert engine.store.load_record("api1").launched_as is not None, "claimed"
    await until(lambda: ready(snap_api.ctx.pools) == 1, "refilled")
    member = next(iter(snap_api.ctx.pools.members))
    lines = await run_cell(snap_api, {"argv": ["true"], "template": REF, "name": "c1",
                                      "keep": True})
    assert lines[-1]["type"] == "result" and lines[-1]["cell"]["exit_code"] == 0, lines
    assert engine.store.load_record("c1").launched_as == member


async def test_a_service_scaling_up_claims_members(snap_api: Api, engine: Engine) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    await snap_api.client.put("/v1/pools/web:worker", json={"size": 2})
    await until(lambda: ready(snap_api.ctx.pools) == 2, "two members warm")
    members = set(snap_api.ctx.pools.members)
    made = await snap_api.client.post("/v1/services", json={
        "name": "svc", "template": REF, "replicas": 2})
    assert made.status_code in (200, 201, 202), made.text
    await until(lambda: len([n for n in engine.projection.names() if n.startswith("svc-")
                             and engine.store.load_record(n).state.value == "ready"]) == 2,
                "two instances ready")
    claimed = {engine.store.load_record(n).launched_as for n in engine.projection.names()
               if n.startswith("svc-")}
    assert claimed == members


async def test_pool_ls_reads_the_disk_without_a_daemon(home: Path, engine: Engine) -> None:
    fabricate(engine.dirs, snapshot=snapshot_info())
    (engine.dirs.root / "daemon.toml").write_text("[pools]\nmemory_budget_mib = 700\n")
    tomlfile = engine.dirs.root / "templates" / "web" / "template.toml"
    tomlfile.write_text('template_id = "web"\n[[variants]]\nrole = "worker"\npool = 3\n')
    env = cli_env(home)
    out = await asyncio.to_thread(
        subprocess.run, [*BOXUI, "pool", "ls", "--json"],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["memory_budget_mib"] == 700
    assert report["pools"] == [{"template": REF, "size": 3, "source": "toml", "ready": 0,
                                "warming": 0, "memory_mib": 0, "revision": None,
                                "problem": None}]
    bad = await asyncio.to_thread(
        subprocess.run, [*BOXUI, "pool", "set", "Web!", "2"],
        env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "ID or ID:ROLE" in bad.stderr
    assert "Traceback" not in bad.stderr
