"""`POST /v1/templates/builds` over the fake driver: the stream's phases and result, bad
input refused before anything is written, and a build that ends with its client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from backend.state.state_dir import StateDir
from backend.template_builds import from_source
from backend.template_builds.snapshot import image_producer
from backend.templates.errors import TemplateError
from backend.templates.layout import TemplateDir, templates_root
from backend.templates.publish import Producer, VariantJob
from backend.templates.revision import VariantArtifacts
from backend.templates.revision_store import current_revision, revisions
from tests.api_helpers import Api
from tests.templates.helpers import fake_base_image

BUILDS = "/v1/templates/builds"
TEXT = ('template_id = "web"\n[[variants]]\nrole = "worker"\n'
        '[[variants]]\nrole = "db"\nmemory_mib = 512\n')


def lines_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


async def test_build_streams_its_phases_then_the_result(api: Api, dirs: StateDir) -> None:
    fake_base_image(dirs)
    built = await api.client.post(BUILDS, json={"text": TEXT, "file_name": "web.toml"})
    assert built.status_code == 200
    lines = lines_of(built)
    assert lines[:-1] == [
        {"type": "progress", "message": "building web-worker (role worker, image)"},
        {"type": "progress", "message": "building web-db (role db, image)"}]
    result = lines[-1]["result"]
    assert lines[-1]["type"] == "result"
    tdir = TemplateDir.of(dirs, "web")
    assert result["revision"] == current_revision(tdir) and result["kind"] == "image"
    assert (result["cache_hit"], result["previous"], sorted(result["cache_keys"])) == (
        False, None, ["db", "worker"])
    assert tdir.spec.read_text() == TEXT

    again = lines_of(await api.client.post(BUILDS, json={"template_id": "web",
                                                         "snapshot": True}))
    assert [line["type"] for line in again] == ["result"]
    assert again[0]["result"]["cache_hit"] is True
    assert again[0]["result"]["revision"] == result["revision"]
    assert again[0]["result"]["notes"] == [
        "the stand-in driver cannot save snapshots; built an image template "
        "(machines cold-boot)"]
    assert len(revisions(tdir)) == 1


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    ({"text": "template_id = [", "file_name": "bad.toml"}, 422, "invalid_spec",
     "bad.toml: invalid TOML"),
    ({"text": 'template_id = "web"\n', "file_name": "t.toml"}, 422, "invalid_spec",
     "t.toml: missing required key 'variants'"),
    ({"template_id": "Not_An_Id"}, 422, "invalid_name", "invalid"),
    ({"template_id": "nope"}, 404, "template_not_found", "no template with id 'nope'"),
    ({"template_id": "web", "text": TEXT}, 422, "invalid_request", "exactly one"),
    ({"snapshot": True}, 422, "invalid_request", "exactly one"),
    ({"text": TEXT, "file_name": "a\nb"}, 422, "invalid_request", "single line"),
])
async def test_bad_input_is_refused_before_anything_is_written(
        api: Api, dirs: StateDir, body: dict[str, Any], status: int, code: str,
        message: str) -> None:
    fake_base_image(dirs)
    answer = await api.client.post(BUILDS, json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["code"] == code and message in answer.json()["message"]
    assert not templates_root(dirs).exists()


def failing_producer(error: BaseException) -> Producer:
    async def produce(job: VariantJob) -> VariantArtifacts:
        if job.variant.role == "db":
            raise error
        return await image_producer()(job)

    return produce


async def test_a_failed_build_ends_with_an_error_line_and_publishes_nothing(
        api: Api, dirs: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_base_image(dirs)
    monkeypatch.setattr(from_source, "image_producer",
                        lambda: failing_producer(TemplateError("building web-db: no ssh")))
    lines = lines_of(await api.client.post(BUILDS, json={"text": TEXT}))
    assert lines[-1] == {"type": "error", "code": "template",
                         "message": "building web-db: no ssh"}
    assert [line["type"] for line in lines] == ["progress", "progress", "error"]
    tdir = TemplateDir.of(dirs, "web")
    assert revisions(tdir) == [] and current_revision(tdir) is None
    assert list(tdir.artifacts.iterdir()) == []  # no staging dir left either


class GatedProducer:
    """Produces nothing until cancelled: a build stuck in its second variant's boot."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()

    def __call__(self) -> Producer:
        async def produce(job: VariantJob) -> VariantArtifacts:
            if job.variant.role != "db":
                return await image_producer()(job)
            (job.directory / "ram.bin").write_bytes(b"half")
            self.waiting.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            raise AssertionError("unreachable")

        return produce


async def first_revision(api: Api, dirs: StateDir) -> tuple[TemplateDir, list[str]]:
    fake_base_image(dirs)
    assert (await api.client.post(BUILDS, json={"text": TEXT})).status_code == 200
    tdir = TemplateDir.of(dirs, "web")
    return tdir, sorted(p.name for p in tdir.artifacts.iterdir())


async def test_a_client_that_goes_away_cancels_the_build(
        api: Api, dirs: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    tdir, before = await first_revision(api, dirs)
    current = current_revision(tdir)
    gate = GatedProducer()
    monkeypatch.setattr(from_source, "image_producer", gate)
    changed = TEXT.replace("512", "640")
    async with api.client.stream("POST", BUILDS, json={"text": changed}) as response:
        assert response.status_code == 200
        async with asyncio.timeout(10):
            await gate.waiting.wait()
    # the client closed the connection mid-build (as Ctrl-C in the CLI does)
    async with asyncio.timeout(10):
        await gate.cancelled.wait()
        while sorted(p.name for p in tdir.artifacts.iterdir()) != before:
            await asyncio.sleep(0.02)  # the staging dir is removed in a thread
    assert current_revision(tdir) == current and len(revisions(tdir)) == 1
    assert tdir.spec.read_text() == TEXT


async def test_the_daemon_shutting_down_cancels_the_build_and_says_so(
        api: Api, dirs: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    tdir, before = await first_revision(api, dirs)
    gate = GatedProducer()
    monkeypatch.setattr(from_source, "image_producer", gate)
    async with api.client.stream("POST", BUILDS, json={"text": TEXT.replace("512", "640")}
                                 ) as response:
        lines = response.aiter_lines()
        async with asyncio.timeout(10):
            await gate.waiting.wait()
            api.ctx.closing.set()
            seen = [json.loads(line) async for line in lines if line.strip()]
            await gate.cancelled.wait()
    assert seen[-1]["type"] == "error" and seen[-1]["code"] == "shutting_down"
    async with asyncio.timeout(10):
        while sorted(p.name for p in tdir.artifacts.iterdir()) != before:
            await asyncio.sleep(0.02)
    assert len(revisions(tdir)) == 1

