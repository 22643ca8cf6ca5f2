"""Keeping each service at its desired number of instances.

One reconciler task per service compares the desired replicas (persisted first) with the
instances that exist and acts: it creates instances (creating -> booting -> ready) or
drains surplus ones (draining -> stopping -> stopped, then deleted) after their
in-flight commands finish or the drain timeout passes. A watcher on the event bus
registers each instance's endpoint when it is ready, deregisters it with a reason when
it leaves, and has a failed instance replaced after the restart back-off. At startup
(after crash recovery re-adopted what still runs) the same reconciliation brings every
service back to its desired count: instances found alive are counted, never duplicated.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

from backend.errors import BoxuiError, MachineExistsError
from backend.services.endpoint_registry import EndpointRegistry
from backend.services.scale_models import (
    AT_CAPACITY,
    InstanceHealth,
    InstanceInfo,
    ScaleRequest,
    ScaleResponse,
    ServiceView,
)
from backend.services.service_events import service_event
from backend.services.service_spec import ServiceExistsError, ServiceNotFoundError, ServiceSpec
from backend.services.service_store import ServiceStore
from backend.state.event_bus import Missed, Subscription
from backend.state.events import verb_of
from backend.state.lifecycle import InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.supervision.machine_exec import MachineExec
from backend.supervision.restart_policy import RestartTracker
from backend.supervision.supervisor import Supervisor
from backend.templates.machine_from_template import spec_from_template

log = logging.getLogger("boxui.services")

S = InstanceState
LIVE = frozenset({S.CREATING, S.BOOTING, S.READY, S.BUSY})
SERVING = frozenset({S.READY, S.BUSY})
DEAD = frozenset({S.STOPPED, S.FAILED, S.CRASHED, S.BROKEN})
#: which live instance to drain first: not yet serving, then idle, busy last
_DRAIN_ORDER = {S.CREATING: 0, S.BOOTING: 1, S.READY: 2, S.BUSY: 3}


class ServiceManager:
    def __init__(self, supervisor: Supervisor, machine_exec: MachineExec, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.supervisor = supervisor
        self.engine = supervisor.engine
        self.exec = machine_exec
        self.store = ServiceStore(self.engine.dirs)
        self._clock = clock
        self._specs: dict[str, ServiceSpec] = {}
        self._spec_lock = asyncio.Lock()
        self._wake: dict[str, asyncio.Event] = {}
        self._requested: defaultdict[str, int] = defaultdict(int)
        self._completed: defaultdict[str, int] = defaultdict(int)
        self._changed = asyncio.Condition()
        self._trackers: dict[str, RestartTracker] = {}
        self._held: dict[str, str] = {}  # dead instance -> service, waiting out back-off
        self._leaving: set[str] = set()  # instances being drained or removed by us
        self._booting: set[str] = set()  # instances whose boot we are driving
        self.endpoints = EndpointRegistry(self.engine)
        self._born: dict[str, int] = {}
        self._births = itertools.count(1)

    # --- startup ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load services, adopt their instances (crash recovery has already re-adopted
        the processes) and reconcile each to its desired replicas."""
        specs, problems = await asyncio.to_thread(self.store.load_all)
        for problem in problems:
            log.warning("%s", problem)
            self.engine.startup_notes.append(problem)
        machines = await asyncio.to_thread(self.engine.machines)
        # oldest first; a machine whose spec cannot be read has no creation time and no
        # service (comparing its stand-in 0 with a datetime ended this task)
        members = sorted((m.spec.created_at, m.name, m.spec.service) for m in machines
                         if m.spec is not None and m.spec.service is not None)
        for _created, name, service in members:
            self.engine.memberships[name] = service
            self._born[name] = next(self._births)
        subscription = self.engine.subscribe(maxsize=4096)
        self.supervisor.spawn(self._watch(subscription), "services-watch")
        for spec in specs:
            self._specs[spec.name] = spec
        orphaned = set(self.engine.memberships.values()) - set(self._specs)
        for name in orphaned:
            log.warning("instances of %s have no service file: draining them", name)
        for instance, service in list(self.engine.memberships.items()):
            if self.engine.projection.state_of(instance) in SERVING:
                await self._register(instance, service)
        for name in sorted(set(self._specs) | orphaned):
            self._ensure_reconciler(name)
            self.wake(name)

    # --- reading ---------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, name: str) -> ServiceSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ServiceNotFoundError(name)
        return spec

    def instances(self, service: str) -> list[str]:
        return sorted(m for m, s in self.engine.memberships.items()
                      if s == service and self.engine.projection.state_of(m) is not None)

    def current_replicas(self, service: str) -> int:
        return sum(1 for m in self.instances(service)
                   if self.engine.projection.state_of(m) in SERVING and m not in self._leaving)

    async def view(self, name: str) -> ServiceView:
        spec = self.spec(name)
        return ServiceView(spec=spec, current_replicas=self.current_replicas(name),
                           instances=await self.instance_infos(name))

    async def views(self) -> list[ServiceView]:
        return [await self.view(name) for name in self.names()]

    async def instance_infos(self, service: str) -> list[InstanceInfo]:
        infos = []
        for instance in self.instances(service):
            state = self.engine.projection.state_of(instance)
            if state is None:
                continue
            try:
                created = (await asyncio.to_thread(self.engine.store.load_spec,
                                                   instance)).created_at
            except BoxuiError:
                continue  # being deleted
            sample = self.supervisor.health.history.latest(instance)
            infos.append(InstanceInfo(
                id=instance, state=state, service=service, created_at=created,
                ready_at=self.endpoints.ready_at(instance),
                endpoint=self.endpoints.endpoint_of(instance),
                health=InstanceHealth(
                    cpu_percent=sample.cpu_percent if sample else None,
                    memory_bytes=sample.rss_bytes if sample else None,
                    inflight_requests=self.exec.registry.in_flight(instance),
                    healthy=state in SERVING and not (sample and sample.ssh_ok is False)),
            ))
        return infos

    # --- changing --------------------------------------------------------------------

    def _instance_spec(self, spec: ServiceSpec, instance: str) -> MachineSpec:
        """An instance's machine: from the service's template (restored from its
        snapshot when it has one), else boxui's own image."""
        if spec.template is None:
            return MachineSpec(name=instance, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                               accel=spec.accel, restart="never", service=spec.name,
                               env=dict(spec.env), ports=list(spec.ports))
        made = spec_from_template(self.engine.dirs, instance, spec.template,
                                  vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                                  accel=spec.accel)
        return made.model_copy(update={"service": spec.name, "env": dict(spec.env),
                                       "ports": list(spec.ports)})

    async def create(self, spec: ServiceSpec) -> int:
        """Persist a new service and start reconciling it; returns the generation to
        pass to `wait_settled`. A template whose snapshot cannot serve the service's
        size is refused here, naming the mismatch, before anything is written."""
        if spec.template is not None:
            probe = await asyncio.to_thread(self._instance_spec, spec, f"{spec.name}-probe")
            await asyncio.to_thread(self.supervisor.restore_plan, probe)
        async with self._spec_lock:
            if spec.name in self._specs or self.store.path(spec.name).exists():
                raise ServiceExistsError(spec.name)
            taken = [m for m in self.engine.projection.names()
                     if self.engine.memberships.get(m) == spec.name]
            if taken:
                raise ServiceExistsError(spec.name)
            await asyncio.to_thread(self.store.save, spec)
            self._specs[spec.name] = spec
        await self.engine.record_event(service_event(
            "created", spec.name, f"service created with {spec.replicas} replicas "
            f"(max {spec.max_replicas})", replicas=spec.replicas))
        self._ensure_reconciler(spec.name)
        return self.wake(spec.name)

    async def scale(self, request: ScaleRequest) -> tuple[ScaleResponse, int | None]:
        """Accept or refuse a scale request; accepted, the new desired count is persisted
        before anything else happens. Returns the response and the generation to wait
        for (None when refused)."""
        request_id = request.request_id or str(uuid.uuid4())
        spec = self.spec(request.service)
        if request.replicas > spec.max_replicas:
            return ScaleResponse(
                request_id=request_id, accepted=False,
                current_replicas=self.current_replicas(spec.name),
                target_replicas=spec.max_replicas,
                instances=await self.instance_infos(spec.name),
                error=f"{AT_CAPACITY}: {spec.name} allows at most {spec.max_replicas} "
                f"replicas, {request.replicas} requested",
            ), None
        async with self._spec_lock:
            spec = self.spec(request.service)
            old = spec.replicas
            updated = spec.model_copy(update={"replicas": request.replicas})
            await asyncio.to_thread(self.store.save, updated)
            self._specs[spec.name] = updated
        self._fresh_start(spec.name)
        await self.engine.record_event(service_event(
            "scaled", spec.name, f"{old} -> {request.replicas} replicas",
            request_id=request_id, **{"from": old, "to": request.replicas}))
        generation = self.wake(spec.name)
        return ScaleResponse(
            request_id=request_id, accepted=True,
            current_replicas=self.current_replicas(spec.name),
            target_replicas=request.replicas, instances=await self.instance_infos(spec.name),
        ), generation

    async def remove(self, name: str) -> None:
        """Scale to zero (persisted first), wait until every instance is gone, then
        delete the service's file."""
        await self.scale(ScaleRequest(service=name, replicas=0, request_id="remove"))
        async with self._spec_lock:
            self._specs.pop(name, None)
        await self.wait_settled(name, self.wake(name))
        await asyncio.to_thread(self.store.delete, name)
        await self.engine.record_event(service_event("removed", name, "service removed"))

    def wake(self, name: str) -> int:
        self._requested[name] += 1
        event = self._wake.get(name)
        if event is not None:
            event.set()
        return self._requested[name]

    async def wait_settled(self, name: str, generation: int) -> None:
        """Until a reconciliation that started after `generation` was asked for ended."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._completed[name] >= generation)

    def _fresh_start(self, name: str) -> None:
        """A user's scale request is a fresh beginning for replacement back-off."""
        self._trackers.pop(name, None)
        for instance, service in list(self._held.items()):
            if service == name:
                del self._held[instance]

    # --- reconciling -----------------------------------------------------------------

    def _ensure_reconciler(self, name: str) -> None:
        if name not in self._wake:
            self._wake[name] = asyncio.Event()
            self.supervisor.spawn(self._reconcile_loop(name), f"service-{name}")

    async def _reconcile_loop(self, name: str) -> None:
        wake = self._wake[name]
        while True:
            await wake.wait()
            wake.clear()
            generation = self._requested[name]
            try:
                await self._reconcile_once(name)
            except BoxuiError as exc:
                log.warning("reconciling %s: %s", name, exc)
            async with self._changed:
                self._completed[name] = generation
                self._changed.notify_all()

    async def _reconcile_once(self, name: str) -> None:
        spec = self._specs.get(name)
        desired = spec.replicas if spec else 0
        projection = self.engine.projection
        members = [m for m in self.instances(name) if m not in self._leaving]
        states = {m: projection.state_of(m) for m in members}
        held = [m for m in members if m in self._held]
        for m in members:  # failed or stopped instances whose replacement is due
            if states[m] in DEAD and m not in self._held:
                await self._remove(m, name, "removed after it left")
        live = [m for m in members if states[m] in LIVE]
        if len(live) + len(held) > desired:
            for m in held:  # replacements no longer wanted
                self._held.pop(m, None)
                await self._remove(m, name, "not replaced: fewer replicas wanted")
            held = []
        stale = [m for m in live if states[m] is S.CREATING and m not in self._booting]
        missing = desired - len(live) - len(held)
        jobs = [self._boot_instance(m, name) for m in stale]
        if missing > 0 and spec is not None:
            jobs += [self._add_instance(spec) for _ in range(missing)]
        elif missing < 0:
            busy = {m for m in live if self.exec.registry.in_flight(m)}  # marked or not yet
            victims = sorted(live, key=lambda m: (_DRAIN_ORDER[S.BUSY if m in busy  # type: ignore[index]
                                                               else states[m]],
                                                  self.exec.registry.in_flight(m),
                                                  -self._born.get(m, 0)))[:-missing]
            timeout = spec.drain_timeout if spec else 30.0
            jobs += [self._drain(m, name, timeout) for m in victims]
        if jobs:
            await asyncio.gather(*jobs)

    async def _add_instance(self, spec: ServiceSpec) -> None:
        while True:
            instance = f"{spec.name}-{secrets.token_hex(3)}"
            if not self.engine.store.exists(instance) and \
                    self.engine.projection.state_of(instance) is None:
                break
        machine = self._instance_spec(spec, instance)
        self.engine.memberships[instance] = spec.name
        self._born[instance] = next(self._births)
        self._booting.add(instance)
        try:
            await self.engine.create_machine(machine, boot_next=True)
        except MachineExistsError:
            self._booting.discard(instance)
            return
        await self._boot_instance(instance, spec.name)

    async def _boot_instance(self, instance: str, service: str) -> None:
        self._booting.add(instance)
        try:
            await self.supervisor.start_machine(instance)
        except BoxuiError as exc:
            # it is `failed` now; the watcher schedules its replacement after back-off
            log.warning("instance %s of %s failed to boot: %s", instance, service, exc)
            return
        finally:
            self._booting.discard(instance)
        if self.engine.projection.state_of(instance) in SERVING:
            await self._register(instance, service)

    async def _drain(self, instance: str, service: str, timeout: float) -> None:
        self._leaving.add(instance)
        try:
            state = self.engine.projection.state_of(instance)
            note = "scale-down before it was ready"
            if state in SERVING:
                await self._deregister(instance, service, "scale-down")
                inflight = self.exec.registry.in_flight(instance)
                await self.engine.transition(
                    instance, Verb.DRAINING, extra={"inflight": inflight},
                    message=f"scale-down: waiting for {inflight} command(s) in flight "
                    f"(up to {timeout:g} s)")
                if await self.exec.registry.wait_idle(instance, timeout):
                    note = "scale-down: drained"
                else:
                    left = self.exec.registry.in_flight(instance)
                    note = (f"scale-down: drain timeout after {timeout:g} s with {left} "
                            "command(s) still in flight")
            await self.supervisor.stop_machine(instance, note=note)
            await self.supervisor.delete_machine(instance, force=True)
        finally:
            self._leaving.discard(instance)

    async def _remove(self, instance: str, service: str, reason: str) -> None:
        self._leaving.add(instance)
        try:
            await self._deregister(instance, service, reason)
            await self.supervisor.delete_machine(instance, force=True)
        finally:
            self._leaving.discard(instance)

    # --- endpoints and failures ------------------------------------------------------

    async def _register(self, instance: str, service: str) -> None:
        if await self.endpoints.register(instance, service):
            self._tracker(service).machine_up()

    async def _deregister(self, instance: str, service: str, reason: str) -> None:
        await self.endpoints.deregister(instance, service, reason)

    def _tracker(self, service: str) -> RestartTracker:
        if service not in self._trackers:
            self._trackers[service] = RestartTracker(self._clock)
        return self._trackers[service]

    async def _watch(self, subscription: Subscription) -> None:
        async for item in subscription:
            if isinstance(item, Missed):
                for name in list(self._wake):
                    self.wake(name)
                continue
            if verb_of(item.type) is None or item.subject is None:
                continue
            instance = item.subject
            service = self.engine.memberships.get(instance)
            if service is None:
                continue
            to = item.data.get("to")
            if to in (S.READY.value, S.BUSY.value):
                if instance not in self._leaving and instance not in self._booting:
                    await self._register(instance, service)
                continue
            reason = _leaving_reason(to, item.data)
            await self._deregister(instance, service, reason)
            if to is None:
                self.engine.memberships.pop(instance, None)
                self._born.pop(instance, None)
            elif to in {s.value for s in DEAD} and instance not in self._leaving:
                await self._replace_later(instance, service, reason)

    async def _replace_later(self, instance: str, service: str, reason: str) -> None:
        if instance in self._held or service not in self._specs:
            return
        decision = self._tracker(service).record_failure()
        self._held[instance] = service
        if not decision.restart:
            await self.engine.record_event(service_event(
                "degraded", service, f"{instance} {reason}; not replaced: "
                f"{decision.describe()} (a scale request tries again)"))
            return
        await self.engine.record_event(service_event(
            "replacing", service, f"{instance} {reason}; replacing it: {decision.describe()}",
            instance=instance, delay=decision.delay))
        self.supervisor.spawn(self._release_later(instance, service, decision.delay),
                              f"replace-{instance}")

    async def _release_later(self, instance: str, service: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._held.pop(instance, None) is not None:
            self.wake(service)


def _leaving_reason(to: object, data: dict[str, object]) -> str:
    detail = str(data.get("reason") or data.get("message") or "").strip()
    if to is None:
        return "deleted"
    label = str(to)
    return f"{label}: {detail}" if detail else label
