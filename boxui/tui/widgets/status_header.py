"""The top line: counts of machines by state, and the accelerator in plain words."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from textual.widgets import Static

ORDER = ("ready", "busy", "booting", "creating", "draining", "unhealthy", "unresponsive",
         "stopping", "stopped", "failed", "crashed", "broken", "unknown")


def header_markup(states: Iterable[str], accel: str, accel_reason: str,
                  colour: Callable[[str], str], hosts: int = 1) -> str:
    """`hosts`: how many hosts `states` come from (local and the others followed); an
    unreachable host's machines count as `unknown`."""
    counts = Counter(states)
    total = sum(counts.values())
    where = f" on {hosts} hosts" if hosts > 1 else ""
    parts = [f"[b]boxui[/b]  {total} machine{'s' if total != 1 else ''}{where}"]
    for state in ORDER:
        if counts.get(state):
            parts.append(f"[{colour(state) or 'default'}]{counts[state]} {state}[/]")
    if accel == "tcg":
        parts.append("accel: TCG (software emulation, slower than KVM)")
    else:
        parts.append(f"accel: {accel.upper()}")
    return "  ·  ".join(parts)


class StatusHeader(Static):
    """One line that changes rarely: skip identical updates, and never re-lay out the
    screen for it (a layout pass redraws every widget, the 1,000-row table included)."""

    _markup = ""

    def show(self, markup: str) -> None:
        if markup != self._markup:
            self._markup = markup
            self.update(markup, layout=False)
