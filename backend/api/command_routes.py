"""`/v1/commands`: the command registry of every machine, also of machines since deleted
(a cell's machine is deleted when it ends; its commands' records stay)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.state.command_record import CommandRecord
from backend.state.names import validate_name

router = APIRouter(prefix="/v1/commands", tags=["commands"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


@router.get("", summary="Commands not finished first, then finished ones, newest first")
async def list_commands(ctx: Ctx, machine: Annotated[str | None, Query()] = None,
                        ) -> list[CommandRecord]:
    if machine is not None:
        validate_name(machine)
    return ctx.exec.registry.commands(machine)
