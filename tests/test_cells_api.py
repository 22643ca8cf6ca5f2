"""`/v1/cells` over the fake driver: a cell's steps, output, files, cancel and refusals.

Commands "in the guest" run on the host (tests.fake_exec), so a guest path is a host
path here: inputs and exports go through the same exec/stdin path the default guest uses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from backend.state.cell_projection import CellVerb, cell_verb_of
from backend.state.engine import Engine
from backend.state.event_log import read_log
from tests.api_helpers import Api
from tests.fake_exec import GatedRunner


async def run_cell(api: Api, body: dict[str, Any]) -> list[dict[str, Any]]:
    lines = []
    async with asyncio.timeout(30), api.client.stream("POST", "/v1/cells", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for raw in resp.aiter_lines():
            if raw.strip():
                lines.append(json.loads(raw))
    return lines


def cell_verbs(engine: Engine) -> list[CellVerb]:
    return [v for e in read_log(engine.dirs.event_log).events
            if (v := cell_verb_of(e.type)) is not None]


def output_of(lines: list[dict[str, Any]], stream: str) -> bytes:
    return b"".join(base64.b64decode(line["data_b64"]) for line in lines
                    if line["type"] == "output" and line["stream"] == stream)


async def test_a_cell_runs_its_command_then_destroys_its_machine(api: Api, engine: Engine,
                                                                 tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"payload\n")
    guest = tmp_path / "guest"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = f"cat {guest}/in.txt > {guest}/res.txt; echo made; echo warn >&2; exit 3"
    lines = await run_cell(api, {
        "argv": ["sh", "-c", script], "name": "c1", "env": {"K": "v"},
        "inputs": [{"host_path": str(src), "guest_path": f"{guest}/in.txt"}],
        "exports": [{"guest_path": f"{guest}/res.txt", "host_dir": str(out_dir)}]})
    result = lines[-1]
    assert result["type"] == "result", lines
    cell = result["cell"]
    assert (cell["name"], cell["exit_code"], cell["outcome"]) == ("c1", 3, "failed")
    assert output_of(lines, "stdout") == b"made\n" and output_of(lines, "stderr") == b"warn\n"
    artifact = cell["artifacts"][0]
    assert (out_dir / "res.txt").read_bytes() == b"payload\n"
    assert artifact["size_bytes"] == 8
    assert artifact["sha256"] == hashlib.sha256(b"payload\n").hexdigest()
    assert cell_verbs(engine) == [CellVerb.STARTED, CellVerb.MATERIALIZED,
                                  CellVerb.INPUTS_COPIED, CellVerb.COMMAND_COMPLETED,
                                  CellVerb.EXPORTED, CellVerb.DESTROYED]
    assert [line["step"] for line in lines if line["type"] == "step"][-1] == "destroyed"
    assert not engine.store.exists("c1") and engine.projection.state_of("c1") is None
    assert api.driver.calls.count(("kill", "c1")) + api.driver.calls.count(("stop", "c1"))
    listed = (await api.client.get("/v1/cells")).json()
    assert [c["name"] for c in listed] == ["c1"] and listed[0]["stage"] == "destroyed"


async def test_keep_leaves_the_machine_and_a_default_name_is_made(api: Api,
                                                                  engine: Engine) -> None:
    lines = await run_cell(api, {"argv": ["true"], "keep": True})
    cell = lines[-1]["cell"]
    assert cell["name"].startswith("cell-") and cell["machine_kept"] is True
    assert cell["outcome"] == "succeeded"
    assert engine.store.exists(cell["name"])


async def test_a_timeout_fails_the_command_and_still_destroys(api: Api,
                                                              engine: Engine) -> None:
    lines = await run_cell(api, {"argv": ["hold", "t"], "name": "slow", "timeout": 0.2})
    cell = lines[-1]["cell"]
    assert (cell["outcome"], cell["exit_code"]) == ("timed_out", None)
    assert "timed out after 0.2 s" in cell["reason"]
    assert not engine.store.exists("slow")


async def test_cancel_stops_the_command_and_destroys_the_machine(
        api: Api, engine: Engine, runner: GatedRunner) -> None:
    async def follow() -> list[dict[str, Any]]:
        return await run_cell(api, {"argv": ["hold", "c"], "name": "stopme"})

    following = asyncio.create_task(follow())
    async with asyncio.timeout(10):
        await runner.entered["c"].wait()
    cell_id = (await api.client.get("/v1/cells")).json()[0]["id"]
    answer = await api.client.post(f"/v1/cells/{cell_id}/cancel")
    assert answer.status_code == 202
    lines = await following
    cell = lines[-1]["cell"]
    assert (cell["outcome"], cell["reason"], cell["stage"]) == ("cancelled", "cancelled",
                                                                 "destroyed")
    assert CellVerb.COMMAND_FAILED in cell_verbs(engine)
    assert not engine.store.exists("stopme")
    assert (await api.client.post(f"/v1/cells/{cell_id}/cancel")).status_code == 404


async def test_a_client_that_goes_away_cancels_its_cell(api: Api, engine: Engine,
                                                        runner: GatedRunner) -> None:
    async with asyncio.timeout(30):
        async with api.client.stream("POST", "/v1/cells",
                                     json={"argv": ["hold", "g"], "name": "gone"}):
            await runner.entered["g"].wait()
        while cell_verbs(engine)[-1:] != [CellVerb.DESTROYED]:
            await asyncio.sleep(0.05)
    assert not engine.store.exists("gone")
    cell = (await api.client.get("/v1/cells")).json()[0]
    assert cell["outcome"] == "cancelled"


async def test_refused_cells_leave_nothing(api: Api, engine: Engine, tmp_path: Path) -> None:
    await api.client.post("/v1/machines", json={"name": "taken"})
    bad = [({"argv": ["true"], "name": "taken"}, 409),
           ({"argv": ["true"], "name": "Bad_Name"}, 422),
           ({"argv": []}, 422),
           ({"argv": ["true"], "template": "nope"}, 404),
           ({"argv": ["true"], "inputs": [{"host_path": str(tmp_path / "none"),
                                           "guest_path": "/x"}]}, 422),
           ({"argv": ["true"], "exports": [{"guest_path": "/x",
                                            "host_dir": str(tmp_path / "none")}]}, 422),
           ({"argv": ["true"], "exports": [{"guest_path": "rel", "host_dir": "/tmp"}]}, 422)]
    for body, status in bad:
        answer = await api.client.post("/v1/cells", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert set(answer.json()) == {"code", "message"}
    assert cell_verbs(engine) == []
    assert engine.projection.names() == ["taken"]
