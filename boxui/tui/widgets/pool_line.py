"""One line under the header: each template variant's warm pool (ready of its size), shown
only while some pool exists. Members are not machines, so they are never table rows.

It reads the members' records in the state dir (the same as `boxui pool ls` with no
daemon), so it works over the embedded backend and over a daemon alike, every two seconds
in a thread: a few small files, and a pool's fill is not an event the app is sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import Static

from backend.errors import BoxuiError
from backend.pools.views import PoolsReport, disk_report
from backend.state.state_dir import open_state_dir

REFRESH_SECONDS = 2.0


def pool_markup(report: PoolsReport) -> str:
    if not report.pools:
        return ""
    parts = []
    for pool in report.pools:
        text = f"{pool.template} {pool.ready}/{pool.size} ready"
        if pool.warming:
            text += f", {pool.warming} warming"
        parts.append(text)
    return (f"[b]warm pools[/b]  {'  ·  '.join(parts)}  ·  "
            f"{report.memory_used_mib} of {report.memory_budget_mib} MiB")


class PoolLine(Static):
    DEFAULT_CSS = "PoolLine { height: 1; display: none; }"

    def __init__(self, home: Path, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self._home = home
        self._markup = ""

    def on_mount(self) -> None:
        self.set_interval(REFRESH_SECONDS, self._refresh_pools)

    async def _refresh_pools(self) -> None:
        try:
            report = await asyncio.to_thread(lambda: disk_report(open_state_dir(
                self._home, create=False)))
        except (BoxuiError, OSError):  # a line of status: never worth an error in the app
            return
        markup = pool_markup(report)
        if markup != self._markup:
            self._markup = markup
            self.update(markup)
            self.display = bool(markup)
