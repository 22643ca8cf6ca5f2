"""What `boxui host ls` (and later the app's host switcher) shows of one host."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime


@dataclass
class HostStatus:
    """`reachable` False carries the one-line `reason`; `facts` are the kind's own
    (a plain host's load and memory, a boxui host's machines by state)."""

    name: str
    kind: str
    address: str
    reachable: bool
    reason: str | None = None
    latency_ms: float | None = None
    facts: dict[str, object] = field(default_factory=dict)
    seen_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_json(self) -> dict[str, object]:
        return asdict(self)
