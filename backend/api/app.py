"""The FastAPI application: routes, error handling and the OpenAPI document.

The app holds no state of its own; it is built around an `ApiContext` (the daemon's
supervisor), or around a lifespan that builds one (tests, schemathesis).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query

from backend.api import (
    cell_routes,
    command_routes,
    disk_routes,
    event_routes,
    image_routes,
    machine_routes,
    orphan_routes,
    pool_routes,
    port_routes,
    provision_routes,
    service_routes,
    template_routes,
)
from backend.api.activity import CountRequests
from backend.api.context import ApiContext, context
from backend.api.errors import ERROR_RESPONSES, install_error_handlers
from backend.api.idempotency import Idempotency
from backend.api.models import HealthReport
from backend.state.event_log import read_log
from backend.state.events import CloudEvent
from backend.state.names import validate_name

API_TITLE = "boxui control API"
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

misc = APIRouter(prefix="/v1", tags=["health", "events"], responses=ERROR_RESPONSES)
Ctx = Annotated[ApiContext, Depends(context)]


def _version() -> str:
    try:
        return version("boxui")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0.0.0"


@misc.get("/health", summary="Is the supervisor up, and what does it hold")
async def health(ctx: Ctx) -> HealthReport:
    states = Counter(
        state.value for name in ctx.engine.projection.names()
        if (state := ctx.engine.projection.state_of(name)) is not None
    )
    return HealthReport(
        version=_version(), pid=os.getpid(), state_dir=str(ctx.engine.dirs.root),
        uptime_seconds=round(time.monotonic() - ctx.started, 3),
        machines=sum(states.values()), by_state=dict(sorted(states.items())),
        services=len(ctx.services.names()), event_subscribers=ctx.engine.bus.subscriber_count,
        commands_in_flight=sum(1 for c in ctx.exec.registry.commands()
                               if c.completed_at is None),
    )


@misc.get("/events/recent", summary="The last events from the log")
async def recent_events(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    machine: Annotated[str | None, Query()] = None,
) -> list[CloudEvent]:
    if machine is not None:
        validate_name(machine)
    scan = await asyncio.to_thread(read_log, ctx.engine.dirs.event_log)
    events = [e for e in scan.events if machine is None or e.subject == machine]
    return events[-limit:]


def create_app(ctx: ApiContext | None = None, *, lifespan: Lifespan | None = None) -> FastAPI:
    app = FastAPI(title=API_TITLE, version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Drive boxui's machines and services. Served on a unix socket "
                  "(mode 0600) in the state dir's run directory.")
    app.state.context = ctx
    install_error_handlers(app)
    app.add_middleware(Idempotency)  # inside the count: a repeat waiting counts too
    app.add_middleware(CountRequests)
    app.include_router(machine_routes.router)
    app.include_router(disk_routes.router)
    app.include_router(port_routes.router)
    app.include_router(service_routes.router)
    app.include_router(event_routes.router)
    app.include_router(command_routes.router)
    app.include_router(template_routes.router)
    app.include_router(orphan_routes.router)
    app.include_router(image_routes.router)
    app.include_router(provision_routes.router)
    app.include_router(cell_routes.router)
    app.include_router(pool_routes.router)
    app.include_router(misc)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document as served; docs/openapi.json is this, committed."""
    return create_app().openapi()


