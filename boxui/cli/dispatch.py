"""Doing a change through the daemon when one runs, or here under the lock otherwise.

A running daemon owns the VMs, so a command that changes machines or services asks it
over its API; with no daemon the command takes the state dir's lock itself for as long
as it runs (re-adopting what is running first) and lets go.

The daemon client, the engine and asyncio are imported only when a command runs: every
`boxui` invocation imports this module, `boxui ls` must stay fast, and `boxui daemon`
must lose a lock race before it pays for the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from backend.supervision.supervisor import Supervisor
    from boxui.daemon.client import DaemonClient

T = TypeVar("T")


def act(direct: Callable[[Supervisor], Awaitable[T]],
        remote: Callable[[DaemonClient], T]) -> T:
    """Through the daemon if one serves this state dir, else here under the lock."""
    from boxui.daemon.client import find_daemon
    from boxui.daemon.supervised import with_supervisor

    client = find_daemon()
    if client is None:
        return run(with_supervisor(direct))
    with client:
        return remote(client)


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    return asyncio.run(coro)


async def discard(work: Awaitable[object]) -> None:
    """Await `work` and drop its result: direct-path results are read back from disk,
    so that the output is the same as from the daemon's answer."""
    await work
