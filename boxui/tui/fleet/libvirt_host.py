"""A libvirt host, followed through the libvirt driver: its domains, its lifecycle
events (libvirt's, not polled), and CPU and memory from its domain stats once a second.

A lost daemon is told by libvirt's close callback and its keepalive (`HostLost`).
libvirt-python is optional: without it the host is shown unreachable, with why.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from backend.hosts.ssh_link import HostUnreachableError
from backend.state.events import CloudEvent, now_utc
from backend.state.lifecycle import InstanceState
from backend.state.machine_store import LoadedMachine
from backend.state.state_dir import open_state_dir
from backend.supervision.health import HealthSample
from boxui.tui.fleet.follower import Follower, NotOfferedError
from boxui.tui.fleet.messages import HostEventArrived, HostHealthSampled

if TYPE_CHECKING:
    from backend.drivers.libvirt.host import Domain, DomainEvent, LibvirtEvent, LibvirtHost

HEALTH_EVERY = 1.0


def machine_of(domain: Domain) -> LoadedMachine:
    reason = domain.reason or (None if domain.boxui else "not created by boxui")
    return LoadedMachine(name=domain.name, state=domain.state, reason=reason)


class LibvirtFollower(Follower):
    driver: LibvirtHost | None = None

    async def follow(self) -> None:
        try:
            # libvirt-python is an optional extra (see backend.hosts.kinds)
            from backend.drivers.libvirt.host import LibvirtHost
        except ImportError as exc:
            raise HostUnreachableError(f"the libvirt driver is not available ({exc})") \
                from None
        driver = LibvirtHost(self.host.address)
        started = time.monotonic()
        await driver.open()
        try:
            async with driver.subscribe() as queue:
                domains = await driver.domains()
                self.snapshot.machines = {d.name: machine_of(d) for d in domains}
                self.driver = driver
                self.reached(time.monotonic() - started)
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._sample(driver))
                    group.create_task(self._events(queue))
        finally:
            self.driver = None
            await driver.close()

    async def _events(self, queue: asyncio.Queue[LibvirtEvent]) -> None:
        from backend.drivers.libvirt.host import DomainEvent, HostLost

        while True:
            item = await queue.get()
            if isinstance(item, HostLost):
                raise HostUnreachableError(f"host {self.name}: {item.reason}")
            if isinstance(item, DomainEvent):
                self.heard()
                self.post(HostEventArrived(self.name, self._apply(item)))

    def _apply(self, event: DomainEvent) -> CloudEvent:
        before = self.snapshot.machines.get(event.name)
        if event.state is None:
            self.snapshot.machines.pop(event.name, None)
            verb = "deleted"
        else:
            self.snapshot.machines[event.name] = LoadedMachine(
                name=event.name, state=event.state,
                reason=event.reason or (None if event.boxui else "not created by boxui"))
            verb = event.state.value
        return CloudEvent(
            id=str(uuid.uuid4()), source=f"boxui/libvirt/{self.name}",
            type=f"dev.boxui.instance.v1.{verb}", time=now_utc(), subject=event.name,
            data={"machine": event.name, "from": before.state.value if before else None,
                  "to": event.state.value if event.state else None,
                  "message": event.reason or "libvirt"})

    async def _sample(self, driver: LibvirtHost) -> None:
        while True:
            now = time.time()
            samples = [HealthSample(h.name, now, h.cpu_percent,
                                    h.rss_kib * 1024 if h.rss_kib is not None else None,
                                    h.memory_kib * 1024 if h.memory_kib is not None else None,
                                    None, None) for h in await driver.health()]
            self.heard()
            for sample in samples:
                self.history.add(sample)
                self.snapshot.health[sample.machine] = sample
            if samples:
                self.post(HostHealthSampled(self.name, [s.machine for s in samples]))
            await self._find_ready(driver)
            await asyncio.sleep(HEALTH_EVERY)

    async def _find_ready(self, driver: LibvirtHost) -> None:
        """A boxui guest this app did not boot (the CLI did, or virsh) tells it is ready
        only on its console, which libvirt has no event for: its log is read with each
        sample while it shows booting (a small read, and only then)."""
        from backend.drivers.libvirt.host import DomainEvent, LibvirtHostError
        from backend.hosts.libvirt_machines import seen_ready

        for name, machine in list(self.snapshot.machines.items()):
            if machine.state is not InstanceState.BOOTING:
                continue
            try:
                domain = await driver.get(name)
            except LibvirtHostError:
                continue  # gone meanwhile: its event says so
            if await seen_ready(driver, domain):
                self.post(HostEventArrived(self.name, self._apply(DomainEvent(
                    name, domain.uuid, InstanceState.READY, "", True))))

    async def act(self, verb: str, name: str) -> None:
        """As the CLI's `--host` commands do (`LibvirtMachines`, over this connection): a
        machine this state dir made gets a new seed and boot id per start, a stop waits
        its own ACPI timeout, a delete takes its record and volumes too and refuses a
        running one or a domain boxui did not create."""
        from backend.hosts.libvirt_machines import LibvirtMachines

        driver = self.driver
        if driver is None:
            raise HostUnreachableError(f"host {self.name} is unreachable: "
                                       f"{self.snapshot.reason}")
        machines = LibvirtMachines(open_state_dir(self.home), self.host, lv=driver)
        if verb == "start":
            await machines.start(name)
        elif verb == "stop":
            await machines.stop(name, force=False)
        elif verb == "restart":
            await machines.restart(name)
        elif verb == "delete":
            await machines.delete(name, force=False)
        else:
            await super().act(verb, name)

    def session_argv(self, name: str | None) -> list[str]:
        raise NotOfferedError(f"SSH is not offered for libvirt host {self.name}'s domains "
                              "from the app (boxui exec --host works for boxui's own)")
