"""When a background daemon may leave: nothing to supervise and nobody asking.

It stays while any machine or warm pool member runs or boots, a restart is pending, any
service exists or any client request or event stream is open; after `idle_for` seconds
of none of that it lets go. It is told rather than looking: every change of a machine or
service is an event, and every request start and end sets `ApiContext.activity`, so
between those it sleeps on them with the idle period as the only timeout."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from backend.state.event_bus import Subscription
from backend.state.lifecycle import ACTIVE_STATES, InstanceState

if TYPE_CHECKING:  # the API loads after recovery (see `serve`); only its type is used here
    from backend.api.context import ApiContext

#: a creating machine is being made by a request or a service: not idle either
BUSY_STATES = ACTIVE_STATES | {InstanceState.CREATING}


def is_idle(ctx: ApiContext) -> bool:
    sup = ctx.supervisor
    if ctx.open_requests or sup.handles or sup._restart_timers or ctx.services.names():
        return False
    if ctx.pools.members or ctx.pools.starting:
        return False  # warm pool members are running machines, refilled by this daemon
    projection = ctx.engine.projection
    return not any(projection.state_of(name) in BUSY_STATES for name in projection.names())


async def wait_until_idle(ctx: ApiContext, idle_for: float) -> None:
    """Return once the daemon has been idle for `idle_for` seconds without a break."""
    subscription = ctx.engine.subscribe(maxsize=4)  # only that something happened counts
    try:
        while True:
            ctx.activity.clear()
            while subscription.get_nowait() is not None:
                pass
            if not is_idle(ctx):
                await _next_change(ctx, subscription, None)
            elif not await _next_change(ctx, subscription, idle_for) and is_idle(ctx):
                return  # (a pool member can appear without an event: asked again)
    finally:
        subscription.close()


async def _next_change(ctx: ApiContext, subscription: Subscription,
                       timeout: float | None) -> bool:
    """Wait for an event or a request to start or end; False when `timeout` passed."""
    waiters = {asyncio.ensure_future(ctx.activity.wait()),
               asyncio.ensure_future(subscription.get())}
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
