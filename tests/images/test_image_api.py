"""`/v1/images` over the stand-in builder: the build's NDJSON stream, the listing, removal,
bad input refused before a stream starts, and a build that ends with its client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from backend.images.store import find_image, os_images_dir, users_of
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import StateDir
from tests.api_helpers import Api
from tests.images.helpers import Stand
from tests.images.test_builder import RECIPE

BUILDS = "/v1/images/builds"


@pytest.fixture
def stand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dirs: StateDir, api: Api) -> Stand:
    stand = Stand(tmp_path / "stand")
    stand.root.mkdir()
    monkeypatch.setenv("FAKE_MMDEBSTRAP_RECORD", str(stand.record))
    (dirs.images / "recipes").mkdir(parents=True)
    (dirs.images / "recipes" / "tiny.toml").write_text(RECIPE)
    api.ctx.image_tools = stand.tools()
    return stand


def lines_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


async def test_build_streams_progress_then_result_and_is_listed(api: Api, dirs: StateDir,
                                                                 stand: Stand) -> None:
    built = await api.client.post(BUILDS, json={"name": "tiny"})
    assert built.status_code == 200
    lines = lines_of(built)
    assert {line["type"] for line in lines[:-1]} == {"progress"}
    assert {"resolving", "downloading", "unpacking", "configuring", "packing"} <= \
        {line["step"] for line in lines[:-1]}
    assert {"step": "downloading", "done": 2, "total": 3, "package": "bash"}.items() <= \
        next(line for line in lines if line.get("done") == 2 and
             line["step"] == "downloading").items()
    result = lines[-1]
    assert result["type"] == "result" and result["result"]["cache_hit"] is False
    assert result["result"]["image"]["name"] == "tiny"
    again = lines_of(await api.client.post(BUILDS, json={"name": "tiny"}))
    assert again[-1]["result"]["cache_hit"] is True
    listed = (await api.client.get("/v1/images")).json()
    by_name = {entry["name"]: entry for entry in listed}
    assert by_name["default"]["kind"] == "default"
    assert by_name["debian-12"]["built"] is False
    assert by_name["debian-12-build"]["built"] is False
    assert by_name["tiny"]["built"] is True and by_name["tiny"]["packages"] == 3
    removed = await api.client.delete("/v1/images/tiny")
    assert removed.status_code == 200 and removed.json()["name"] == "tiny"
    assert find_image(dirs, "tiny") is None
    assert (await api.client.delete("/v1/images/tiny")).json()["code"] == "not_found"


async def test_failed_build_ends_with_an_error_line(api: Api, dirs: StateDir, stand: Stand,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MMDEBSTRAP", "missing-package")
    lines = lines_of(await api.client.post(BUILDS, json={"name": "tiny"}))
    assert lines[-1]["type"] == "error" and lines[-1]["code"] == "build_failed"
    assert "resolving nosuchpkg" in lines[-1]["message"]
    assert find_image(dirs, "tiny") is None


@pytest.mark.parametrize(("body", "code"), [
    ({"name": "Bad"}, "invalid_name"),
    ({"name": "nosuch"}, "invalid_recipe"),
    ({}, "invalid_request"),
])
async def test_bad_build_requests_are_refused_before_the_stream(
        api: Api, stand: Stand, body: dict[str, str], code: str) -> None:
    answer = await api.client.post(BUILDS, json=body)
    assert answer.status_code == 422 and answer.json()["code"] == code
    assert stand.calls() == []


async def test_bad_recipe_names_its_field(api: Api, dirs: StateDir, stand: Stand) -> None:
    (dirs.images / "recipes" / "broken.toml").write_text('suite = "bookworm"\nfiles = 3\n')
    answer = await api.client.post(BUILDS, json={"name": "broken"})
    assert answer.status_code == 422
    assert "broken.toml: field 'files'" in answer.json()["message"]


async def test_default_cannot_be_removed(api: Api) -> None:
    answer = await api.client.delete("/v1/images/default")
    assert answer.status_code == 422 and "default" in answer.json()["message"]


async def test_client_leaving_cancels_the_build(api: Api, dirs: StateDir, stand: Stand,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ready = stand.root / "ready"
    monkeypatch.setenv("FAKE_MMDEBSTRAP", "hang")
    monkeypatch.setenv("FAKE_MMDEBSTRAP_READY", str(ready))
    async with api.client.stream("POST", BUILDS, json={"name": "tiny"}) as response:
        assert response.status_code == 200
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the fake mmdebstrap never started"
            await asyncio.sleep(0.05)
    fake = psutil.Process(int(ready.read_text()))
    deadline = time.monotonic() + 30
    while fake.is_running() and fake.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the build went on after its client left"
        await asyncio.sleep(0.05)
    print(f"fake gone {30 - (deadline - time.monotonic()):.1f} s after the client left")
    deadline = time.monotonic() + 60
    while [p for p in os_images_dir(dirs).iterdir() if p.name.startswith(".build-")]:
        assert time.monotonic() < deadline, list(os_images_dir(dirs).rglob("*"))[:20]
        await asyncio.sleep(0.05)
    assert find_image(dirs, "tiny") is None


def test_users_are_the_machines_that_name_the_image() -> None:
    """The spec's `image` field comes with disk machines; any spec that has it counts."""

    def machine(name: str, spec: object) -> LoadedMachine:
        fields: dict[str, Any] = {"name": name, "spec": spec, "state": "stopped"}
        return LoadedMachine.model_construct(**fields)

    machines = [machine(name, SimpleNamespace(image=image))
                for name, image in (("b", "tiny"), ("a", "tiny"), ("c", "other"))]
    machines.append(machine("broken", None))
    assert users_of(machines, "tiny") == ["a", "b"]


async def test_an_image_a_template_boots_is_not_removed(api: Api, dirs: StateDir,
                                                        stand: Stand) -> None:
    from backend.templates.layout import TemplateDir
    from backend.templates.revision import TemplateRevision, read_revision, write_revision
    from tests.templates.helpers import REVISION, fabricate

    await api.client.post(BUILDS, json={"name": "tiny"})
    fabricate(dirs)
    revision_dir = TemplateDir.of(dirs, "web").revision_dir(REVISION)
    record = read_revision(revision_dir)
    variant = record.variants["worker"].model_copy(update={"os_image": "tiny"})
    write_revision(revision_dir, TemplateRevision.model_validate(
        {**record.model_dump(), "variants": {"worker": variant.model_dump()}}))
    refused = await api.client.delete("/v1/images/tiny")
    assert refused.json()["code"] == "busy"
    assert f"template web revision {REVISION}" in refused.json()["message"]
    assert find_image(dirs, "tiny") is not None  # its frozen disks still have their base
