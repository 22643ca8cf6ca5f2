"""`/v1/orphans`: hypervisors of this state dir that no machine owns (`boxui gc`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.supervision.orphan_gc import collect_orphans

router = APIRouter(prefix="/v1/orphans", tags=["orphans"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


class OrphanEntry(BaseModel):
    pid: int
    machine: str
    #: why no machine owns it
    reason: str
    #: what was done: "would kill" (dry run), "killed (...)", or "not killed: ..."
    action: str


@router.get("", summary="List orphaned hypervisors (kills nothing)")
async def list_orphans(ctx: Ctx) -> list[OrphanEntry]:
    found = await collect_orphans(ctx.supervisor, dry_run=True)
    return [OrphanEntry.model_validate(entry) for entry in found]


@router.post("/gc", summary="Kill orphaned hypervisors (proven identity only)")
async def gc_orphans(ctx: Ctx, dry_run: Annotated[bool, Query()] = False) -> list[OrphanEntry]:
    done = await collect_orphans(ctx.supervisor, dry_run=dry_run)
    return [OrphanEntry.model_validate(entry) for entry in done]
