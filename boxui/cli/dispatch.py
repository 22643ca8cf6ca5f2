"""Every change goes through the supervisor's API: `call` reaches the daemon serving the
state dir, starting one in the background first when none does.

The daemon client and asyncio are imported only when a command runs: every `boxui`
invocation imports this module, and `boxui ls` must stay fast.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from boxui.daemon.client import QueryParams

T = TypeVar("T")


def call(method: str, path: str, *, json: object = None, params: QueryParams | None = None,
         also_ok: tuple[int, ...] = ()) -> Any:
    """One request to the daemon (started first if need be); its JSON answer."""
    from boxui.daemon.spawn import ensure_daemon

    with ensure_daemon() as client:
        return client.call(method, path, json=json, params=params, also_ok=also_ok)


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    return asyncio.run(coro)
