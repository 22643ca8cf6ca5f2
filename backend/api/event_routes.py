"""`/v1/events`: live events as NDJSON, one CloudEvent per line, as they happen.

The stream opens with a `dev.boxui.stream.v1.subscribed` event, so a client knows from
which moment on it sees everything; a client too slow to keep up gets a
`dev.boxui.stream.v1.missed` event with the count it lost instead of stalling the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES
from backend.state.event_bus import Missed
from backend.state.events import CloudEvent, now_utc
from backend.state.names import validate_name

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["events"])
Ctx = Annotated[ApiContext, Depends(context)]

STREAM_TYPE_PREFIX = "dev.boxui.stream.v1."
NDJSON = "application/x-ndjson"
STREAM_QUEUE = 4096

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "an endless stream of CloudEvents, one JSON object per line",
        "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/CloudEvent"}}},
    },
    400: ERROR_RESPONSES[400],
    422: ERROR_RESPONSES[422],
}


def stream_event(kind: str, **data: Any) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source="/boxui/api",
                      type=STREAM_TYPE_PREFIX + kind, time=now_utc(), data=data)


def _line(event: CloudEvent) -> bytes:
    return orjson.dumps(event.to_json_dict()) + b"\n"


@router.get("/events", response_class=StreamingResponse, responses=_STREAM_DOC,
            summary="Follow live events (NDJSON)")
async def follow_events(ctx: Ctx, machine: Annotated[str | None, Query()] = None
                        ) -> StreamingResponse:
    if machine is not None:
        validate_name(machine)
    subscription = ctx.engine.subscribe(maxsize=STREAM_QUEUE, machine=machine)

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield _line(stream_event("subscribed", machine=machine))
            async with contextlib.aclosing(_until_closing(ctx, subscription.get)) as items:
                async for item in items:
                    if isinstance(item, Missed):
                        yield _line(stream_event("missed", count=item.count))
                    else:
                        yield _line(item)
        finally:
            subscription.close()

    return StreamingResponse(lines(), media_type=NDJSON)


async def _until_closing(ctx: ApiContext, get: Callable[[], Awaitable[T]]
                         ) -> AsyncGenerator[T, None]:
    """What `get` returns, one after another, until the API shuts down (SIGTERM): an
    endless stream then ends cleanly instead of holding the server open."""
    closing = asyncio.ensure_future(ctx.closing.wait())
    try:
        while True:
            getter = asyncio.ensure_future(get())
            done, _ = await asyncio.wait({getter, closing},
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return
            yield getter.result()
    finally:
        closing.cancel()


class HealthSampleView(BaseModel):
    """One machine's health at one moment (what `boxui`'s app graphs); None: unknown."""

    machine: str
    time: float
    cpu_percent: float | None
    rss_bytes: int | None
    guest_total_bytes: int | None
    guest_free_bytes: int | None
    ssh_ok: bool | None


_SAMPLES_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "an endless stream of health samples, one JSON object per line",
        "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/HealthSampleView"}}},
    },
    400: ERROR_RESPONSES[400],
    422: ERROR_RESPONSES[422],
}


@router.get("/health/samples", response_class=StreamingResponse, responses=_SAMPLES_DOC,
            summary="Follow every machine's health samples (NDJSON, about 1 Hz each)")
async def follow_health(ctx: Ctx, machine: Annotated[str | None, Query()] = None
                        ) -> StreamingResponse:
    if machine is not None:
        validate_name(machine)
    subscription = ctx.supervisor.health.subscribe(maxsize=STREAM_QUEUE, machine=machine)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(_until_closing(ctx, subscription.get)) as samples:
                async for sample in samples:
                    yield orjson.dumps(dataclasses.asdict(sample)) + b"\n"
        finally:
            subscription.close()

    return StreamingResponse(lines(), media_type=NDJSON)


@router.get("/health/latest", summary="Each running machine's latest health sample",
            responses={400: ERROR_RESPONSES[400], 422: ERROR_RESPONSES[422]})
async def latest_health(ctx: Ctx) -> list[HealthSampleView]:
    history = ctx.supervisor.health.history
    return [HealthSampleView(**dataclasses.asdict(sample))
            for name in ctx.engine.projection.names()
            if (sample := history.latest(name)) is not None]
