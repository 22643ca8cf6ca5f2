"""Starting the machines marked `autostart = true` when a daemon starts.

A daemon started at boot (or login) by `boxui daemon install`'s unit should bring back
what the user wants running, as Docker's `--restart` or a systemd service would. It runs
after crash recovery, so a machine still running is adopted, never started twice, and
one whose process vanished while boxui was down (the host rebooted) is `crashed` by then:
that one is started too, as is a `stopped` one. A `failed` machine is not: boxui gave up
on it (or its boot failed) and a user should look before it runs again; a `broken` one
cannot start. Service instances are left to their service, which keeps its own count.

Each start runs in a task of its own in the supervisor's task group, so the API serves
at once and one slow or failing boot holds up no other. An event before each start says
why the machine is starting, and one more says so if the start was refused or failed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from backend.errors import BoxuiError
from backend.state.events import SOURCE, CloudEvent, now_utc
from backend.state.lifecycle import InstanceState
from backend.state.machine_store import LoadedMachine
from backend.supervision.supervisor import Supervisor

log = logging.getLogger("boxui.autostart")

AUTOSTART_TYPE = "dev.boxui.daemon.v1.autostart"
AUTOSTART_FAILED_TYPE = "dev.boxui.daemon.v1.autostart-failed"

#: the states an autostart machine is started from (see the module's docstring)
STARTABLE = frozenset({InstanceState.STOPPED, InstanceState.CRASHED})


async def autostart_machines(supervisor: Supervisor) -> list[str]:
    """Start, each in the background, every machine that asks to be started with the
    daemon and is at rest; return their names (in the order they were spawned)."""
    machines = await asyncio.to_thread(supervisor.engine.machines)
    names = [m.name for m in machines if _wants_start(supervisor, m)]
    for name in names:
        supervisor.spawn(_start_one(supervisor, name), f"autostart-{name}")
    return names


def _wants_start(supervisor: Supervisor, machine: LoadedMachine) -> bool:
    spec = machine.spec
    if machine.broken or spec is None or not spec.autostart or spec.service is not None:
        return False
    return supervisor.engine.projection.state_of(machine.name) in STARTABLE


async def _start_one(supervisor: Supervisor, name: str) -> None:
    engine = supervisor.engine
    state = engine.projection.state_of(name)
    was = state.value if state is not None else "unknown"
    await engine.record_event(_event(
        AUTOSTART_TYPE, name, f"starting at daemon start-up (autostart = true; was {was})"))
    try:
        await supervisor.start_machine(name)
    except BoxuiError as exc:
        log.warning("autostart of %s failed: %s", name, exc)
        await engine.record_event(_event(AUTOSTART_FAILED_TYPE, name,
                                         f"autostart did not start it: {exc}"))


def _event(kind: str, name: str, message: str) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source=SOURCE, type=kind, time=now_utc(),
                      subject=name, data={"machine": name, "message": message})
