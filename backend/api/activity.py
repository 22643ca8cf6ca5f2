"""Counting the requests a supervisor is answering, as they start and end.

A daemon that exits when idle must know whether a client is waiting on it (a boot that
takes minutes, an open event stream). It is told: this middleware counts each request
in and out and wakes whoever waits on `ApiContext.activity`; nothing polls.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.context import ApiContext


class CountRequests:
    """Pure ASGI, so that a streaming response counts until its last byte is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = scope["app"].state.context if scope["type"] == "http" else None
        if not isinstance(ctx, ApiContext):
            await self.app(scope, receive, send)
            return
        ctx.open_requests += 1
        ctx.activity.set()
        try:
            await self.app(scope, receive, send)
        finally:
            ctx.open_requests -= 1
            ctx.activity.set()
