"""`/v1/machines`: list, get, create, start, stop, restart, delete, exec."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Response

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.api.models import ExecRequest, ExecResponse
from backend.api.provision_routes import (
    create_with_scripts,
    first_provisioning,
    provisioning_pending,
)
from backend.errors import BoxuiError, MachineNotFoundError
from backend.state import listing_cache
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from backend.state.mount_spec import check_mount_sources
from backend.state.names import validate_name
from backend.supervision.inflight_commands import CommandRecord
from backend.supervision.machine_disk import check_disk_request

router = APIRouter(prefix="/v1/machines", tags=["machines"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


class InvalidRequestError(BoxuiError):
    code = "invalid_request"


def _known(ctx: ApiContext, name: str) -> str:
    validate_name(name)
    if ctx.engine.projection.state_of(name) is None and not ctx.engine.store.exists(name):
        raise MachineNotFoundError(name)
    return name


async def _load(ctx: ApiContext, name: str) -> LoadedMachine:
    return await asyncio.to_thread(ctx.engine.machine, name)


@router.get("", summary="List machines", response_model=list[LoadedMachine])
async def list_machines(ctx: Ctx) -> Response:
    # served from the listing cache the engine keeps warm (stat-checked per machine):
    # the same views, without parsing and validating every machine's files each time
    views = await asyncio.to_thread(listing_cache.list_views, ctx.engine.dirs, supervised=True)
    return Response(orjson.dumps(views), media_type="application/json")


@router.get("/{name}", summary="Get one machine")
async def get_machine(name: str, ctx: Ctx) -> LoadedMachine:
    return await _load(ctx, _known(ctx, name))


@router.post("", status_code=201, summary="Create a machine (and boot it with start=true)")
async def create_machine(spec: MachineSpec, ctx: Ctx,
                         start: Annotated[bool, Query()] = False) -> LoadedMachine:
    # a snapshot that cannot serve this machine is refused before the machine exists
    await asyncio.to_thread(ctx.supervisor.restore_plan, spec)
    if spec.image is not None:  # an unknown image or a too-small disk, before it exists
        await asyncio.to_thread(check_disk_request, ctx.engine.dirs.images, spec)
    await asyncio.to_thread(check_mount_sources, spec.name, spec.mounts)  # as a boot does
    await create_with_scripts(ctx, spec)
    if start:
        await ctx.supervisor.start_machine(spec.name)
        await first_provisioning(ctx, spec.name)
    return await _load(ctx, spec.name)


@router.post("/{name}/start", summary="Boot a machine and wait until it is ready")
async def start_machine(name: str, ctx: Ctx) -> LoadedMachine:
    pending = await provisioning_pending(ctx, _known(ctx, name))
    await ctx.supervisor.start_machine(name)
    if pending:
        await first_provisioning(ctx, name)
    return await _load(ctx, name)


@router.post("/{name}/stop", summary="Power a machine off (force: kill it)")
async def stop_machine(name: str, ctx: Ctx,
                       force: Annotated[bool, Query()] = False) -> LoadedMachine:
    await ctx.supervisor.stop_machine(_known(ctx, name), force=force)
    return await _load(ctx, name)


@router.post("/{name}/restart", summary="Stop a machine, then start it again")
async def restart_machine(name: str, ctx: Ctx) -> LoadedMachine:
    await ctx.supervisor.restart_machine(_known(ctx, name))
    return await _load(ctx, name)


@router.delete("/{name}", status_code=204, response_class=Response,
               summary="Delete a machine (force: kill it first if running)")
async def delete_machine(name: str, ctx: Ctx,
                         force: Annotated[bool, Query()] = False) -> Response:
    await ctx.supervisor.delete_machine(_known(ctx, name), force=force)
    return Response(status_code=204)


@router.post("/{name}/exec", summary="Run a command in a running machine over SSH")
async def exec_in_machine(name: str, body: ExecRequest, ctx: Ctx) -> ExecResponse:
    stdin: bytes | None = None
    if body.stdin_b64 is not None:
        try:
            stdin = base64.b64decode(body.stdin_b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("stdin_b64: not valid base64") from None
    record, output = await ctx.exec.run(_known(ctx, name), body.argv, stdin=stdin,
                                        timeout=body.timeout, idempotent=body.idempotent,
                                        max_attempts=body.max_attempts)
    return ExecResponse(command=record, exit_code=output.exit_code,
                        stdout_b64=base64.b64encode(output.stdout).decode(),
                        stderr_b64=base64.b64encode(output.stderr).decode())


@router.get("/{name}/commands",
            summary="A machine's commands not finished first, then finished ones, newest first")
async def machine_commands(name: str, ctx: Ctx) -> list[CommandRecord]:
    return ctx.exec.registry.commands(_known(ctx, name))
