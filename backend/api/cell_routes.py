"""`/v1/cells`: run a command in a throwaway machine, list cells, cancel one.

`POST /v1/cells` answers NDJSON: the cell's steps and its command's output as they come,
then one line with the finished cell (or an error). The cell belongs to the daemon: a
client that disconnects cancels it, and a cancelled cell still destroys its machine. A
request that cannot run at all (a taken name, an unknown template, a missing input) is
answered 4xx before the stream starts, with nothing logged and nothing made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.api.ndjson_doc import NDJSON, build_responses
from backend.cells.models import CellLine, CellRequest
from backend.cells.run import CellRun
from backend.state.cell_projection import CellView

router = APIRouter(prefix="/v1/cells", tags=["cells"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]
_RUN_DOC = build_responses(CellLine)


@router.get("", summary="Every cell, oldest first, with its stage and outcome")
async def list_cells(ctx: Ctx) -> list[CellView]:
    return await ctx.cells.cells()


@router.post("", response_class=StreamingResponse, responses=_RUN_DOC,
             summary="Run a command in a fresh machine (NDJSON: steps, output, the cell)")
async def run_cell(body: CellRequest, ctx: Ctx, request: Request) -> StreamingResponse:
    run = await ctx.cells.start(body)
    return StreamingResponse(_lines(run, ctx, request), media_type=NDJSON,
                             headers={"X-Boxui-Cell": run.id})


@router.post("/{cell_id}/cancel", status_code=202,
             summary="Cancel a running cell: its step stops, its machine is destroyed")
async def cancel_cell(cell_id: str, ctx: Ctx) -> dict[str, str]:
    ctx.cells.cancel(cell_id)
    return {"id": cell_id, "status": "cancelling"}


async def _lines(run: CellRun, ctx: ApiContext, request: Request) -> AsyncIterator[bytes]:
    """Each line until the last; the cell is cancelled if the stream ends any other way
    than by the daemon shutting down (which leaves the cell to its successor)."""
    gone = asyncio.ensure_future(_disconnected(request))
    closing = asyncio.ensure_future(ctx.closing.wait())
    finished = False
    try:
        while True:
            line = asyncio.ensure_future(run.lines.get())
            done, _ = await asyncio.wait({line, gone, closing},
                                         return_when=asyncio.FIRST_COMPLETED)
            if line not in done:
                line.cancel()
                return
            item = line.result()
            # the line's unset fields are left out; the cell's own nulls (exit_code) stay
            fields = {k: v for k, v in item.model_dump(mode="json").items() if v is not None}
            yield orjson.dumps(fields) + b"\n"
            if item.type in ("result", "error"):
                finished = True
                return
    finally:
        if not finished and not closing.done():
            run.cancel()  # the client went (Starlette may cancel us before `gone` says so)
        for waiter in (gone, closing):
            waiter.cancel()


async def _disconnected(request: Request) -> None:
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot tell: leave it to Starlette's own watch
        await asyncio.Event().wait()
