"""Finishing a write that has begun, even when its caller is cancelled.

A lifecycle step is several writes (log append, projection, `state.json`) that must all
happen or none; the log append runs in a thread that a cancellation cannot stop. If the
awaiting task were cancelled mid-step, the log would hold an event the in-memory
projection never saw, and the next step would be checked against a stale state. So a
started step runs to its end in its own task; the caller's cancellation is delivered
once it has.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


async def finish_then_cancel(step: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


def cancel_safe(step: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Make every call of `step` run to its end (see `finish_then_cancel`)."""
    @functools.wraps(step)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await finish_then_cancel(step(*args, **kwargs))

    return run
