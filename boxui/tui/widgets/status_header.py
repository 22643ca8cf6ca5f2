"""The top line: counts of machines by state, and the accelerator in plain words."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from textual.widgets import Static

ORDER = ("ready", "busy", "booting", "creating", "draining", "unhealthy", "unresponsive",
         "stopping", "stopped", "failed", "crashed", "broken")


def header_markup(states: Iterable[str], accel: str, accel_reason: str,
                  colour: Callable[[str], str]) -> str:
    counts = Counter(states)
    total = sum(counts.values())
    parts = [f"[b]boxui[/b]  {total} machine{'s' if total != 1 else ''}"]
    for state in ORDER:
        if counts.get(state):
            parts.append(f"[{colour(state)}]{counts[state]} {state}[/]")
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
