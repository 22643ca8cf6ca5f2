"""What keeps a background daemon from leaving: warm pool members count as running."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from boxui.daemon.idle import is_idle


def _ctx(members: dict[str, object] | None = None, starting: int = 0) -> Any:
    projection = SimpleNamespace(names=lambda: [], state_of=lambda _name: None)
    return SimpleNamespace(
        open_requests=0,
        supervisor=SimpleNamespace(handles={}, _restart_timers={}),
        services=SimpleNamespace(names=lambda: []),
        pools=SimpleNamespace(members=members or {}, starting=starting),
        engine=SimpleNamespace(projection=projection))


def test_nothing_running_is_idle() -> None:
    assert is_idle(_ctx())


def test_warm_pool_members_keep_the_daemon() -> None:
    assert not is_idle(_ctx(members={"pool-1": object()}))
    assert not is_idle(_ctx(starting=1))
