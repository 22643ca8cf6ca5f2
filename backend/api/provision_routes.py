"""`/v1/machines/{name}/provision`: run a machine's provision scripts again; and the
provisioning steps of `create` (scripts copied in; the first run awaited)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.errors import BoxuiError, MachineNotFoundError
from backend.state.machine_spec import MachineSpec
from backend.state.names import validate_name
from backend.supervision.provisioning import (
    ProvisionError,
    ProvisionRecord,
    install_scripts,
    read_record,
    read_scripts,
)

router = APIRouter(prefix="/v1/machines", tags=["machines"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


@router.post("/{name}/provision", summary="Run a running machine's provision scripts again")
async def provision_machine(name: str, ctx: Ctx) -> ProvisionRecord:
    validate_name(name)
    if ctx.engine.projection.state_of(name) is None:
        raise MachineNotFoundError(name)
    if ctx.provisioner is None:
        raise ProvisionError("provisioning is not available here")
    record = await ctx.provisioner.provision(name)
    if record.status == "failed":
        raise ProvisionError(f"{name}: {record.reason}")
    return record


async def create_with_scripts(ctx: ApiContext, spec: MachineSpec) -> None:
    """Create the machine with copies of its scripts: a script that cannot be read is
    refused before the machine exists; one that cannot be copied (a full disk) takes the
    new machine with it, so nothing half-made is left."""
    scripts = await asyncio.to_thread(read_scripts, spec.provision)
    await ctx.engine.create_machine(spec)
    if not scripts:
        return
    try:
        await asyncio.to_thread(install_scripts, ctx.engine.dirs.machine_dir(spec.name),
                                scripts)
    except OSError as exc:
        with contextlib.suppress(BoxuiError, OSError):
            await ctx.engine.delete_machine(spec.name, message="provision scripts not copied")
        raise ProvisionError(f"provision: cannot copy the scripts into {spec.name}: "
                             f"{exc.strerror or exc}") from None


async def provisioning_pending(ctx: ApiContext, name: str) -> bool:
    """Whether a start of `name` is its first ready since its scripts were copied (or
    listed by hand), so the start returns after them, as `create` does."""
    if ctx.provisioner is None:
        return False
    directory = ctx.engine.dirs.machine_dir(name)
    try:
        record = await asyncio.to_thread(read_record, directory)
    except ProvisionError:
        return False
    if record is None:
        try:
            spec = await asyncio.to_thread(ctx.engine.store.load_spec, name)
        except BoxuiError:  # a broken machine: its start says so
            return False
        return bool(spec.provision)
    return record.status == "pending"


async def first_provisioning(ctx: ApiContext, name: str) -> None:
    """Wait for the first run of a new machine's scripts; a failure is the create's."""
    if ctx.provisioner is None:
        return
    record = await asyncio.shield(ctx.provisioner.ensure(name))
    if record.status == "failed":
        raise ProvisionError(f"{name} is failed: {record.reason}")
