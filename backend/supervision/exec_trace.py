"""Timestamps of one exec's phases inside the daemon, for finding where its time goes.

`boxui exec vm -- true` is held to ssh's p95 over a ControlMaster, so one slow exec in
thirty decides the figure, and a figure alone cannot say whether the client, the daemon's
bookkeeping, a garbage collection or the guest was slow. With BOXUI_EXEC_TRACE=FILE in
the daemon's environment each request on the exec socket appends one JSON line to FILE:
when it started (CLOCK_MONOTONIC, ns), each phase's offset in ms, and the garbage
collections that overlapped it. The native client prints its own phases on the same clock
when it sees the variable, so the two line up. Off (the default), a phase costs one
context-variable read.
"""

from __future__ import annotations

import gc
import json
import os
import time
from contextvars import ContextVar

TRACE_ENV = "BOXUI_EXEC_TRACE"
#: read once: the daemon's environment decides, not a request's
_PATH = os.environ.get(TRACE_ENV) or None

Phases = list[tuple[str, int]]
_phases: ContextVar[Phases | None] = ContextVar("boxui_exec_phases", default=None)
#: the last collections, (start ns, end ns, generation)
_collections: list[tuple[int, int, int]] = []
_gc_started = [0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.monotonic_ns()
        return
    _collections.append((_gc_started[0], time.monotonic_ns(), info["generation"]))
    del _collections[:-200]


if _PATH is not None:
    gc.callbacks.append(_on_gc)


def begin() -> Phases | None:
    """Start tracing the current task's request (and the tasks it starts)."""
    if _PATH is None:
        return None
    phases: Phases = [("start", time.monotonic_ns())]
    _phases.set(phases)
    return phases


def mark(label: str) -> None:
    phases = _phases.get()
    if phases is not None:
        phases.append((label, time.monotonic_ns()))


def end(phases: Phases | None, **facts: object) -> None:
    """Append the request's line to the trace file."""
    if phases is None or _PATH is None:
        return
    start, now = phases[0][1], time.monotonic_ns()
    line = {"start_ns": start, "total_ms": round((now - start) / 1e6, 3), **facts,
            "phases": [[label, round((at - start) / 1e6, 3)] for label, at in phases[1:]],
            "gc": [[round((s - start) / 1e6, 3), round((e - s) / 1e6, 3), gen]
                   for s, e, gen in _collections if e >= start and s <= now]}
    with open(_PATH, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
