"""`/v1/machines/{name}/ports`: a machine's port forwards, changed while it runs."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.errors import MachineNotFoundError
from backend.state.names import validate_name
from backend.state.port_forward_view import ForwardView, forward_views
from backend.state.port_mapping import PortMapping, Protocol
from backend.supervision.port_forwards import add_forward, remove_forward

router = APIRouter(prefix="/v1/machines", tags=["machines"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


def _known(ctx: ApiContext, name: str) -> str:
    validate_name(name)
    if ctx.engine.projection.state_of(name) is None:
        raise MachineNotFoundError(name)
    return name


@router.get("/{name}/ports", summary="The machine's port forwards, and the live host ports")
async def list_ports(name: str, ctx: Ctx) -> list[ForwardView]:
    machine = await asyncio.to_thread(ctx.engine.machine, _known(ctx, name))
    return forward_views(machine)


@router.post("/{name}/ports", status_code=201,
             summary="Forward a host port to a guest port, now (no restart) and at every start")
async def add_port(name: str, body: PortMapping, ctx: Ctx) -> ForwardView:
    return await add_forward(ctx.supervisor, _known(ctx, name), body)


@router.delete("/{name}/ports/{guest}", summary="Stop forwarding a guest port")
async def remove_port(name: str, guest: Annotated[int, Path(ge=1, le=65535)], ctx: Ctx,
                      protocol: Protocol = "tcp") -> ForwardView:
    return await remove_forward(ctx.supervisor, _known(ctx, name), guest, protocol)
