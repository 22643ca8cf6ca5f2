"""`/v1/pools`: each template variant's warm pool, and its size."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.pools.views import PoolsReport, PoolView
from backend.templates.template_spec import MAX_POOL

router = APIRouter(prefix="/v1/pools", tags=["pools"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


class PoolSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0, le=MAX_POOL, description="members to keep restored and idle")


@router.get("", summary="Each variant's warm pool: size, ready and warming members, memory")
async def list_pools(ctx: Ctx) -> PoolsReport:
    return ctx.pools.report()


@router.put("/{ref}", summary="Keep SIZE members of template variant ID:ROLE warm")
async def set_pool(ref: str, body: PoolSize, ctx: Ctx) -> PoolView:
    full = await ctx.pools.set_size(ref, body.size)
    return next(v for v in ctx.pools.report().pools if v.template == full)
