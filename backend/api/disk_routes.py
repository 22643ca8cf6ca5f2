"""`/v1/machines/{name}/disk`: a disk machine's image and disk, and growing the disk."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.errors import MachineNotFoundError
from backend.images.store import find_image_in
from backend.state.lifecycle import ACTIVE_STATES
from backend.state.machine_spec import MachineSpec
from backend.state.names import validate_name
from backend.state.state_dir import StateDir
from backend.supervision.machine_disk import (
    DiskSizeError,
    disk_usage,
    grow_disk,
    requested_size,
)
from backend.supervision.supervisor import MachineBusyError

router = APIRouter(prefix="/v1/machines", tags=["machines"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


class DiskView(BaseModel):
    """`usage` is None until the machine's first boot makes its disk."""

    image: str
    size: str | None
    usage: dict[str, Any] | None


class ResizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: str = Field(max_length=40, description="The new size, e.g. 40G; only growing")


def disk_view(dirs: StateDir, spec: MachineSpec) -> DiskView:
    if spec.image is None:
        raise DiskSizeError(f"{spec.name} has no disk of its own (it was not made from "
                            "an image)")
    usage = disk_usage(dirs.machine_dir(spec.name))
    return DiskView(image=spec.image, size=spec.disk,
                    usage=usage.as_json() if usage else None)


def _resize(dirs: StateDir, spec: MachineSpec, size: str) -> None:
    disk_view(dirs, spec)  # refuses a machine without a disk
    assert spec.image is not None
    image = find_image_in(dirs.images, spec.image)
    new_size = requested_size(size, image.size_bytes)
    current = requested_size(spec.disk, image.size_bytes)
    if new_size < current:
        raise DiskSizeError(f"disk: cannot shrink {spec.name}'s disk from {spec.disk} to "
                            f"{size}; only growing is supported")
    grow_disk(dirs.machine_dir(spec.name), new_size)
    spec.disk = size


async def _spec(ctx: ApiContext, name: str) -> MachineSpec:
    validate_name(name)
    if not ctx.engine.store.exists(name):
        raise MachineNotFoundError(name)
    return await asyncio.to_thread(ctx.engine.store.load_spec, name)


@router.get("/{name}/disk", summary="A disk machine's image and disk (sizes in bytes)")
async def get_disk(name: str, ctx: Ctx) -> DiskView:
    spec = await _spec(ctx, name)
    return await asyncio.to_thread(disk_view, ctx.engine.dirs, spec)


@router.post("/{name}/disk/resize", summary="Grow a stopped machine's disk")
async def resize_disk(name: str, body: ResizeRequest, ctx: Ctx) -> DiskView:
    async with ctx.supervisor.machine_lock(name):  # no boot begins halfway through
        state = ctx.engine.projection.state_of(name)
        if state in ACTIVE_STATES:
            raise MachineBusyError(f"{name} is {state.value}; stop it before resizing its disk")
        spec = await _spec(ctx, name)
        await asyncio.to_thread(_resize, ctx.engine.dirs, spec, body.size)
        await asyncio.to_thread(ctx.engine.store.save_spec, spec)
    return await asyncio.to_thread(disk_view, ctx.engine.dirs, spec)
