"""What the app knows of one other host at a moment, and how its machines are shown.

A host that stops answering keeps its machines in the snapshot (nothing is lost) but
they are shown `unknown`, with the reason and the time the host was last seen: never
the state they had, which nobody can vouch for any more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from backend.state.machine_store import LoadedMachine
from backend.supervision.health import HealthSample

#: the app's own machines, in the HOST column and the `host:` filter
LOCAL = "local"
HOST_FILTER_PREFIX = "host:"


class HostState(StrEnum):
    """A machine state boxui's lifecycle does not have: its host cannot tell."""

    UNKNOWN = "unknown"


@dataclass
class HostSnapshot:
    name: str
    kind: str
    address: str
    reachable: bool = False
    reason: str | None = "connecting…"
    #: time.time() when the host last answered; None: never since the app opened
    seen_at: float | None = None
    latency_ms: float | None = None
    machines: dict[str, LoadedMachine] = field(default_factory=dict)
    health: dict[str, HealthSample] = field(default_factory=dict)
    #: the kind's own figures (a plain host's load, memory, disk, users)
    facts: dict[str, object] = field(default_factory=dict)

    def last_seen(self) -> str:
        if self.seen_at is None:
            return "never"
        return time.strftime("%H:%M:%S", time.localtime(self.seen_at))

    def shown(self, machine: LoadedMachine) -> LoadedMachine:
        """The machine as the table shows it: `unknown` while its host does not answer."""
        if self.reachable:
            return machine
        # model_construct: `unknown` is no InstanceState, and the row only reads `.value`
        return LoadedMachine.model_construct(
            name=machine.name, spec=machine.spec, record=machine.record,
            state=HostState.UNKNOWN,  # type: ignore[arg-type]  # see above
            needs_recovery=False,
            reason=f"{self.reason or 'host unreachable'} (last seen {self.last_seen()})")

    def counts(self) -> dict[str, int]:
        """Machines by state as shown (all `unknown` while unreachable)."""
        out: dict[str, int] = {}
        for machine in self.machines.values():
            state = machine.state.value if self.reachable else HostState.UNKNOWN.value
            out[state] = out.get(state, 0) + 1
        return out


def host_key(name: str, host: str) -> str:
    """A remote row's key: names cannot hold `@`, so `dev1@build` never clashes with a
    local `dev1` or with `dev1` on another host."""
    return f"{name}@{host}"


def split_key(key: str) -> tuple[str, str]:
    """(machine, host) of a row key; a local machine's key is its name."""
    name, sep, host = key.rpartition("@")
    return (name, host) if sep else (key, LOCAL)


def split_host_filter(typed: str) -> tuple[str | None, str]:
    """`host:build web` -> ("build", "web"): the host part of a machines filter (the
    host switcher sets it), and the rest for the text filter."""
    host: str | None = None
    rest: list[str] = []
    for word in typed.split(" "):
        if word.startswith(HOST_FILTER_PREFIX):
            host = word[len(HOST_FILTER_PREFIX):] or None
        else:
            rest.append(word)
    return host, " ".join(rest).strip()


def with_host_filter(typed: str, host: str | None) -> str:
    """`typed` with its host part replaced by `host` (None: removed)."""
    _, rest = split_host_filter(typed)
    words = ([f"{HOST_FILTER_PREFIX}{host}"] if host else []) + ([rest] if rest else [])
    return " ".join(words)
