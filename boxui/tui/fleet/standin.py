"""A stand-in host, in this process, for tests and `bench/tui.py --hosts`: machines
given by the caller, which partitions it, heals it, changes states and feeds health by
calling it. Named as what it is wherever it shows (`standin://NAME`); the app sees an
ordinary follower, so what is measured and tested is the app's side."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from backend.hosts.registry import HostDef
from backend.hosts.ssh_link import HostUnreachableError
from backend.state.events import CloudEvent, now_utc
from backend.state.lifecycle import InstanceState
from backend.state.machine_store import LoadedMachine
from backend.supervision.health import HealthSample
from boxui.tui.fleet.follower import Follower
from boxui.tui.fleet.messages import HostEventArrived, HostHealthSampled

_AFTER = {"start": InstanceState.READY, "stop": InstanceState.STOPPED,
          "restart": InstanceState.READY}


class StandinFollower(Follower):
    def __init__(self, name: str, machines: Iterable[LoadedMachine],
                 kind: str = "boxui", events: Iterable[CloudEvent] = ()) -> None:
        host = HostDef.model_validate({"name": name, "kind": kind,
                                       "address": f"ssh://standin-{name}"})
        super().__init__(host, Path("."))
        self.snapshot.address = f"standin://{name}"
        self.truth = {m.name: m for m in machines}
        #: the host's own event log: its recent ones are loaded at each reconnect
        self.log = list(events)
        self.acted: list[tuple[str, str]] = []
        self._up = asyncio.Event()
        self._up.set()
        self._down = asyncio.Event()
        self._why = ""

    async def follow(self) -> None:
        await self._up.wait()
        self._down.clear()
        self.snapshot.machines = dict(self.truth)
        self.reached(0.001)
        self.past(self.log[-100:])
        await self._down.wait()
        raise HostUnreachableError(self._why)

    def partition(self, reason: str) -> None:
        self._why = reason
        self._up.clear()
        self._down.set()

    def heal(self) -> None:
        self._up.set()

    def change(self, name: str, state: InstanceState | None) -> None:
        """The host's machine `name` changed (None: it was deleted); told if it answers."""
        before = self.truth.get(name)
        if state is None:
            self.truth.pop(name, None)
        else:
            self.truth[name] = (before or LoadedMachine(name=name, state=state)).model_copy(
                update={"state": state})
        verb = state.value if state else "deleted"
        event = CloudEvent(
            id=str(uuid.uuid4()), source=f"standin/{self.name}",
            type=f"dev.boxui.instance.v1.{verb}", time=now_utc(), subject=name,
            data={"machine": name, "from": before.state.value if before else None,
                  "to": state.value if state else None, "message": "stand-in host"})
        self.log.append(event)
        if not self.snapshot.reachable:
            return
        self.snapshot.machines = dict(self.truth)
        self.post(HostEventArrived(self.name, event, new=self.first_seen(event)))

    def sample(self, cpu_percent: float) -> None:
        """One health round: every machine at `cpu_percent`."""
        now = time.time()
        names = list(self.snapshot.machines)
        for name in names:
            sample = HealthSample(name, now, cpu_percent, 64 << 20, 512 << 20, 212 << 20, None)
            self.snapshot.health[name] = sample
            self.history.add(sample)
        self.heard()
        self.post(HostHealthSampled(self.name, names))

    async def act(self, verb: str, name: str) -> None:
        if not self.snapshot.reachable:
            raise HostUnreachableError(f"host {self.name} is unreachable: "
                                       f"{self.snapshot.reason}")
        self.acted.append((verb, name))
        self.change(name, _AFTER.get(verb))
