"""Rendering of CLI results as aligned text or JSON; kept apart so commands stay short.

`boxui ls` imports this module, so what only `info` needs (the accelerator detection, the
template restore notes, pydantic models) is imported inside `info_lines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import orjson

if TYPE_CHECKING:  # kept out of `ls`'s import path: pydantic is its largest cost
    from backend.state.events import CloudEvent
    from backend.state.machine_store import LoadedMachine


def emit_json(value: object) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def machine_row(view: dict[str, Any]) -> list[str]:
    """A table row from a machine view (see `backend.state.machine_store.machine_view`)."""
    spec, record = view.get("spec") or {}, view.get("record") or {}
    state = view["state"]
    if view.get("needs_recovery") and state == "stopped":
        state += "*"
    return [
        view["name"],
        state,
        str(spec.get("vcpus", "-")),
        f"{spec['memory_mib']} MiB" if "memory_mib" in spec else "-",
        record.get("accel") or spec.get("accel") or "-",
        str(record.get("ssh_port") or "-"),
        view.get("reason") or "",
    ]


MACHINE_HEADERS = ["NAME", "STATE", "VCPUS", "MEMORY", "ACCEL", "SSH", "REASON"]


def event_line(event: CloudEvent) -> str:
    when = event.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    verb = event.type.rsplit(".", 1)[-1]
    data = event.data
    move = ""
    if "from" in data or "to" in data:
        move = f"{data.get('from') or '-'} -> {data.get('to') or '-'}"
    detail = event.message
    if data.get("reason") and data.get("reason") != detail:
        detail = f"{detail}: {data['reason']}" if detail else str(data["reason"])
    return f"{when}  {event.subject or '-':<20} {verb:<9} {move:<22} {detail}".rstrip()


def info_lines(m: LoadedMachine, supervisor_pid: int | None) -> list[str]:
    """`supervisor_pid`: the live supervisor of the state dir (`live_supervisor`), if any."""
    out = [f"name:           {m.name}", f"state:          {m.state.value}"]
    if m.reason:
        out.append(f"reason:         {m.reason}")
    out.extend(supervision_lines(m, supervisor_pid))
    if m.spec:
        from backend.drivers.qemu.accel import resolve_accel

        choice = resolve_accel(m.spec.accel)
        in_use = m.record.accel if m.record and m.record.accel else None
        if in_use and m.state.value in ("booting", "ready", "busy", "draining", "stopping",
                                         "unresponsive", "unhealthy"):
            out.append(f"{'accel:':<16}{in_use} (running)")
        else:
            out.append(f"{'accel:':<16}{choice.accel} at next start ({choice.reason})")
        spec = m.spec.model_dump(mode="json", exclude_none=True)
        for key, value in spec.items():
            if key == "ports":
                value = ", ".join(str(mapping) for mapping in m.spec.ports)
            if key == "mounts":  # one line each, as `--mount` says it
                out += [f"{'mount:':<16}{mount.describe()}" for mount in m.spec.mounts]
            elif key not in ("name", "accel"):
                out.append(f"{key + ':':<16}{value}")
        out.append(f"{'accel setting:':<16}{m.spec.accel}")
    if m.record:
        rec = m.record
        for key in ("pid", "ssh_port", "ip", "boot_id", "restored_from", "restart_count"):
            value = getattr(rec, key)
            if value not in (None, 0):
                out.append(f"{key + ':':<16}{value}")
        if rec.ports and m.state.value in ("booting", "ready", "busy", "draining",
                                           "stopping", "unresponsive", "unhealthy"):
            live = ", ".join(f"127.0.0.1:{host} -> {guest}" for guest, host in rec.ports.items())
            out.append(f"{'forwards:':<16}{live}")
        out.append(f"{'updated_at:':<16}{rec.updated_at.isoformat()}")
    from backend.templates.restore_plan import shared_state_note

    note = shared_state_note(m.spec, m.record)
    if note:
        out.append(f"{'shared state:':<16}{note}")
    return out


def supervision_lines(m: LoadedMachine, supervisor_pid: int | None) -> list[str]:
    """Whether a live supervisor watches the machine: one that runs has re-adopted every
    machine recorded as running before it served anything."""
    running = m.record is not None and m.record.persisted.value == "running"
    if supervisor_pid is None:
        recovery = ["recovery:       needed (will be checked when a supervisor starts)"]
        return [*(recovery if m.needs_recovery else []), "supervisor:     not running"]
    if running:
        return [f"supervisor:     supervised by pid {supervisor_pid}"]
    return [f"supervisor:     pid {supervisor_pid}"]


def age(when: datetime) -> str:
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
