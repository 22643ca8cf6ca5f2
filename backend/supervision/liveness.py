"""Guest liveness probes: is the guest itself still alive, not just its hypervisor?

A QEMU can answer QMP while the guest inside it is wedged (a stalled sshd, a service
that deadlocked). A machine whose `machine.toml` has `liveness = {...}` is probed the
way a Kubernetes liveness probe or a Docker healthcheck probes a container: an `exec`
command run over the machine's kept SSH connection (it must exit 0), or a `port` that
must answer on its forwarded host port, every `interval` seconds within `timeout`.
Neither writes to the guest's console. Each result goes to the supervisor, which marks
the machine `unhealthy` after `failures` in a row and `recovered` after a success.

Each probed machine has one task in the supervisor's task group, started when the
machine becomes ready (or is re-adopted) and cancelled as soon as an event says it is
stopping, stopped or gone; the events tell, nothing is polled for that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from backend.drivers.base import VmHandle
from backend.drivers.ssh_probe import ssh_banner
from backend.errors import BoxuiError
from backend.state.engine import Engine
from backend.state.event_bus import Missed
from backend.state.events import verb_of
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, Verb
from backend.state.machine_spec import LivenessSpec

TYPE_CHECKING = False
if TYPE_CHECKING:  # at run time the daemon hands a runner in: asyncssh loads with the API,
    # after crash recovery, not before it
    from backend.supervision.machine_exec import ExecRunner

#: after these a machine is (again) running and answering: probe it if it asks to be
_START_ON = frozenset({Verb.READY, Verb.ADOPTED})
#: after these its guest is gone or going: stop probing
_STOP_ON = frozenset({Verb.STOPPING, Verb.STOPPED, Verb.FAILED, Verb.CRASHED,
                      Verb.BROKEN, Verb.DELETED})
#: how long a non-SSH port's far end gets to close a connection the forward accepted
_REFUSAL_GRACE = 0.3


@dataclass(frozen=True)
class ProbeOutcome:
    name: str
    handle: VmHandle
    #: None: the probe passed; else what failed, for the machine's reason
    error: str | None
    #: consecutive failures so far (0 after a pass)
    failures: int
    spec: LivenessSpec


OnOutcome = Callable[[ProbeOutcome], Awaitable[None]]


class LivenessProbes:
    """`runner` runs exec probes (the daemon's `MachineExec.runner`, so they share its
    kept SSH connections); without one (a supervisor that runs no commands), exec probes
    are skipped: a probe boxui cannot run says nothing about the guest."""

    def __init__(self, engine: Engine, handles: Callable[[], Mapping[str, VmHandle]],
                 spawn: Callable[..., asyncio.Task[None]], on_outcome: OnOutcome) -> None:
        self.engine = engine
        self.handles = handles
        self.spawn = spawn
        self.on_outcome = on_outcome
        self.runner: ExecRunner | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: waits out each interval (a test runs the probes' schedule faster)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self) -> None:
        """Follow the machines' events for as long as the supervisor runs."""
        subscription = self.engine.subscribe()
        try:
            for name in self.engine.projection.names():  # running before this started
                if self.engine.projection.state_of(name) in ACTIVE_STATES:
                    self._begin(name)
            async for event in subscription:
                if isinstance(event, Missed):
                    self._resync()
                    continue
                verb = verb_of(event.type)
                if event.subject and verb in _START_ON:
                    self._begin(event.subject)
                elif event.subject and verb in _STOP_ON:
                    self._end(event.subject)
        finally:
            subscription.close()
            for name in list(self.tasks):
                self._end(name)

    def _resync(self) -> None:
        for name in list(self.tasks):
            if self.engine.projection.state_of(name) not in ACTIVE_STATES:
                self._end(name)
        for name in self.engine.projection.names():
            if self.engine.projection.state_of(name) in ACTIVE_STATES:
                self._begin(name)

    def _begin(self, name: str) -> None:
        if name in self.tasks or self.engine.projection.state_of(name) is InstanceState.BOOTING:
            return
        try:
            spec = self.engine.store.load_spec(name).liveness
        except BoxuiError:
            return
        if spec is not None:
            task = self.spawn(self._probe_loop(name), f"liveness-{name}")
            self.tasks[name] = task
            task.add_done_callback(lambda done: self._forget(name, done))

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(name) is task:
            del self.tasks[name]

    def _end(self, name: str) -> None:
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _probe_loop(self, name: str) -> None:
        failures = 0
        while True:
            try:
                spec = (await asyncio.to_thread(self.engine.store.load_spec, name)).liveness
            except BoxuiError:
                return  # deleted, or its file went bad (reported as broken elsewhere)
            if spec is None:
                return  # the probe was taken out of machine.toml
            await self.sleep(spec.interval)
            handle = self.handles().get(name)
            if handle is None:
                return
            if spec.exec is not None and self.runner is None:
                continue
            error = await self.probe_once(name, handle, spec)
            failures = 0 if error is None else failures + 1
            await self.on_outcome(ProbeOutcome(name, handle, error, failures, spec))

    async def ssh_answers(self, handle: VmHandle, timeout: float) -> bool | None:
        """The health sampler's SSH check: `true` on the kept connection, which the
        guest's sshd logs once per boot, not once per check. None without a runner."""
        if self.runner is None:
            return None
        try:
            out = await self.runner(self.engine, handle.name, handle.ssh_port, ["true"],
                                    None, timeout)
        except (BoxuiError, OSError):
            return False
        return out.exit_code == 0

    async def probe_once(self, name: str, handle: VmHandle, spec: LivenessSpec) -> str | None:
        """One probe; None if it passed, else what went wrong in one line."""
        try:
            async with asyncio.timeout(spec.timeout):
                if spec.exec is not None:
                    return await self._exec(name, handle, spec.exec, spec.timeout)
                return await self._port(name, handle, spec.port or 22, spec.timeout)
        except TimeoutError:
            what = f"`{spec.exec}`" if spec.exec is not None else f"port {spec.port}"
            return f"liveness probe {what} did not answer within {spec.timeout:g} s"

    async def _exec(self, name: str, handle: VmHandle, command: str,
                    timeout: float) -> str | None:
        if self.runner is None:  # (the probe loop skips these)
            return "liveness probe cannot run: no SSH exec in this supervisor"
        try:
            out = await self.runner(self.engine, name, handle.ssh_port, ["sh", "-c", command],
                                    None, timeout)
        except (BoxuiError, OSError) as exc:
            return f"liveness probe `{command}` failed: {exc}"
        if out.exit_code == 0:
            return None
        tail = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        detail = f": {tail[0][:200]}" if tail[0] else ""
        return f"liveness probe `{command}` exited {out.exit_code}{detail}"

    async def _port(self, name: str, handle: VmHandle, guest_port: int,
                    timeout: float) -> str | None:
        if guest_port == 22:  # SSH speaks first: a wedged sshd accepts but never greets
            # (the probe's own deadline, around this, ends a silent one first)
            if await ssh_banner(handle.ssh_port, timeout=timeout + 1) is None:
                return "liveness probe port 22: no SSH greeting"
            return None
        record = await asyncio.to_thread(self.engine.store.load_record, name)
        host_port = record.ports.get(str(guest_port))
        if host_port is None:
            return f"liveness probe port {guest_port}: not forwarded in this boot"
        return await _port_answers(host_port, guest_port)


async def _port_answers(host_port: int, guest_port: int) -> str | None:
    """QEMU's user-mode forward accepts on the host before it reaches the guest, and
    closes at once when the guest refuses: a connection still open (or talking) after a
    short grace is a port that answers."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
    except OSError as exc:
        return f"liveness probe port {guest_port}: {exc.strerror or exc}"
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REFUSAL_GRACE):
                if await reader.read(1) == b"":
                    return f"liveness probe port {guest_port}: connection closed by the guest"
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
