"""`/v1/templates/builds`: build a template revision under the daemon's supervisor.

The answer is NDJSON: progress lines as the build goes, then one line with the result or
the error. A request that cannot build at all (bad TOML, unknown id) is answered 4xx
before the stream starts, with nothing written. A client that disconnects (Ctrl-C in
`boxui template build`) cancels the build, which then publishes nothing; so does the
daemon shutting down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from backend.api.context import ApiContext, context
from backend.api.ndjson_doc import NDJSON, build_responses
from backend.api.template_models import (
    TemplateBuildLine,
    TemplateBuildRequest,
    TemplateBuildResult,
)
from backend.state.state_dir import StateDir
from backend.template_builds.runs import (
    BuildFailed,
    BuildRun,
    BuildSource,
    BuildUpdate,
    Built,
    checked,
    start_build,
    stored_source,
)

router = APIRouter(prefix="/v1", tags=["templates"])
Ctx = Annotated[ApiContext, Depends(context)]
SHUTTING_DOWN = BuildFailed("shutting_down", "the boxui daemon is shutting down; the "
                            "template build was cancelled and nothing was published")




_BUILD_DOC = build_responses(TemplateBuildLine)


def _source(dirs: StateDir, body: TemplateBuildRequest) -> BuildSource:
    if body.template_id is not None:
        return checked(stored_source(dirs, body.template_id))
    assert body.text is not None  # the model allows exactly one of the two
    return checked(BuildSource(body.text, Path(body.file_name)))


@router.post("/templates/builds", response_class=StreamingResponse, responses=_BUILD_DOC,
             summary="Build a template revision (NDJSON: progress, then the result)")
async def build_template(body: TemplateBuildRequest, ctx: Ctx, request: Request
                         ) -> StreamingResponse:
    source = await asyncio.to_thread(_source, ctx.engine.dirs, body)
    run = start_build(ctx.supervisor, source, snapshot=body.snapshot)
    return StreamingResponse(_lines(run, ctx, request), media_type=NDJSON)


async def _lines(run: BuildRun, ctx: ApiContext, request: Request) -> AsyncIterator[bytes]:
    """Each update as a line until the last; the build is cancelled if the stream ends
    any other way (the client left, or the server stops)."""
    gone = asyncio.ensure_future(_disconnected(request))
    closing = asyncio.ensure_future(ctx.closing.wait())
    try:
        while True:
            update = asyncio.ensure_future(run.next_update())
            done, _ = await asyncio.wait({update, gone, closing},
                                         return_when=asyncio.FIRST_COMPLETED)
            if update not in done:
                update.cancel()
                if closing in done:
                    yield _line(SHUTTING_DOWN)
                return
            yield _line(update.result())
            if isinstance(update.result(), Built | BuildFailed):
                ctx.pools.poke()  # a new revision: members of the old one are replaced
                return
    finally:
        run.cancel()
        for waiter in (gone, closing):
            waiter.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone. Starlette also cancels the stream then on some
    servers; on others it would notice only at the next line written, which for a
    snapshot build can be minutes away (or never, after the last variant)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot tell: leave it to Starlette's own watch
        await asyncio.Event().wait()


def _line(update: BuildUpdate) -> bytes:
    if isinstance(update, Built):
        line = TemplateBuildLine(type="result", result=TemplateBuildResult.model_validate(
            update.result.as_json() | {"notes": update.notes}))
    elif isinstance(update, BuildFailed):
        line = TemplateBuildLine(type="error", code=update.code, message=update.message)
    else:
        line = TemplateBuildLine(type="progress", message=update.message)
    # unset fields of the line are left out; the result's own nulls (`previous`) stay
    fields = {k: v for k, v in line.model_dump(mode="json").items() if v is not None}
    return orjson.dumps(fields) + b"\n"
