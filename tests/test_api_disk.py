"""Disk machines through the API: refused before they exist when the image or the size
cannot be, and a disk grows only while stopped and never shrinks."""

from __future__ import annotations

import shutil

import pytest

from backend.state.engine import Engine
from backend.supervision.machine_disk import DISK_FILE, disk_usage, ensure_disk
from tests.api_helpers import Api
from tests.disk_helpers import fake_image
from tests.test_api_machines import error_of


async def test_unknown_image_or_small_disk_is_refused_before_anything_exists(
        api: Api, engine: Engine) -> None:
    fake_image(engine.dirs.images, "deb")
    c = api.client
    r = await c.post("/v1/machines", json={"name": "b", "image": "nope"})
    assert error_of(r) == (404, "not_found")
    assert r.json()["message"] == "no image 'nope'; images: deb"
    r = await c.post("/v1/machines", json={"name": "b", "image": "deb", "disk": "32M"})
    assert error_of(r) == (422, "invalid_disk") and "smaller than the image" in r.text
    r = await c.post("/v1/machines", json={"name": "b", "image": "deb", "disk": "lots"})
    assert error_of(r) == (422, "invalid_request") and "not a size" in r.text
    assert not engine.store.exists("b")
    r = await c.post("/v1/machines", json={"name": "b", "image": "deb", "disk": "1G"})
    assert r.status_code == 201 and r.json()["spec"]["disk"] == "1G"
    view = (await c.get("/v1/machines/b/disk")).json()
    assert view == {"image": "deb", "size": "1G", "usage": None}


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
async def test_resize_grows_a_stopped_disk_and_refuses_to_shrink(api: Api,
                                                                 engine: Engine) -> None:
    base = fake_image(engine.dirs.images, "deb") / "rootfs.ext4"
    c = api.client
    assert (await c.post("/v1/machines", json={"name": "b", "image": "deb",
                                               "disk": "1G"})).status_code == 201
    directory = engine.dirs.machine_dir("b")
    ensure_disk(directory, base, 1 << 30)
    r = await c.post("/v1/machines/b/disk/resize", json={"size": "2G"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["virtual_bytes"] == 2 << 30
    assert engine.store.load_spec("b").disk == "2G"
    r = await c.post("/v1/machines/b/disk/resize", json={"size": "1536M"})
    assert error_of(r) == (422, "invalid_disk") and "only growing" in r.text
    usage = disk_usage(directory)
    assert usage is not None and usage.virtual_bytes == 2 << 30
    assert engine.store.load_spec("b").disk == "2G"
    await c.post("/v1/machines/b/start")
    r = await c.post("/v1/machines/b/disk/resize", json={"size": "4G"})
    assert error_of(r) == (409, "busy") and "stop it" in r.text
    assert engine.store.load_spec("b").disk == "2G"
    await c.post("/v1/machines/b/stop", params={"force": "true"})
    assert (await c.delete("/v1/machines/b")).status_code == 204
    assert not (directory / DISK_FILE).exists()


async def test_a_machine_without_an_image_has_no_disk_to_show(api: Api) -> None:
    await api.client.post("/v1/machines", json={"name": "plain"})
    r = await api.client.get("/v1/machines/plain/disk")
    assert error_of(r) == (422, "invalid_disk")
    r = await api.client.post("/v1/machines/plain/disk/resize", json={"size": "1G"})
    assert error_of(r) == (422, "invalid_disk")
    assert error_of(await api.client.get("/v1/machines/ghost/disk")) == (404, "not_found")
