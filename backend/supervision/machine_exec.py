"""Running a command in a machine on behalf of the API, counted as in-flight work.

A machine with work in flight is `busy`; when its last command ends it is `ready` again.
A `draining` machine takes no new work (it is on its way out), and its in-flight commands
are left to finish: that is what scale-down waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import io
import shlex
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from backend.errors import BoxuiError, IllegalTransitionError, MachineNotFoundError
from backend.guest.errors import GuestImageError
from backend.guest.machine_seed import load_machine_keys
from backend.state.engine import Engine
from backend.state.event_bus import Missed
from backend.state.events import INSTANCE_TYPE_PREFIX
from backend.state.lifecycle import InstanceState, Verb
from backend.supervision.inflight_commands import CommandRecord, CommandRegistry
from backend.supervision.ssh_pool import SshPool


class MachineNotRunningError(BoxuiError):
    code = "not_running"


class MachineDrainingError(BoxuiError):
    code = "draining"


#: who wants a command's output as it arrives ("stdout"/"stderr", bytes): a cell streams
#: it to its client. A context variable, so the runner's signature stays as it is and a
#: runner that cannot tap (a test's) just hands the output over at the end.
output_tap: contextvars.ContextVar[Callable[[str, bytes], None] | None] = \
    contextvars.ContextVar("output_tap", default=None)


class _Tapped(io.BytesIO):
    def __init__(self, stream: str, tap: Callable[[str, bytes], None] | None) -> None:
        super().__init__()
        self._stream, self._tap = stream, tap

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self._tap is not None:
            self._tap(self._stream, bytes(data))
        return super().write(data)


@dataclass(frozen=True)
class ExecOutput:
    exit_code: int
    stdout: bytes
    stderr: bytes


class ExecRunner(Protocol):
    async def __call__(self, engine: Engine, name: str, port: int, argv: list[str],
                       stdin: bytes | None, timeout: float | None) -> ExecOutput: ...


def argv_with_env(argv: list[str], env: dict[str, str]) -> list[str]:
    """A service's environment for a command run over SSH: `env K=V ... argv` (SSH
    sessions do not read /etc/boxui/env; `env` takes the values as data, not code)."""
    if not env:
        return argv
    return ["env", *(f"{key}={value}" for key, value in sorted(env.items())), *argv]


#: after these a machine's guest is gone or going: its kept SSH connection goes with it
_CLOSE_CONNECTION_ON = frozenset({Verb.STOPPING, Verb.STOPPED, Verb.FAILED, Verb.CRASHED,
                                  Verb.BROKEN, Verb.DELETED})


class MachineExec:
    def __init__(self, engine: Engine, runner: ExecRunner | None = None,
                 registry: CommandRegistry | None = None) -> None:
        self.engine = engine
        self.pool = SshPool()
        self.runner: ExecRunner = runner or self.ssh_runner
        self.registry = registry or CommandRegistry()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def run(self, name: str, argv: list[str], *, stdin: bytes | None = None,
                  timeout: float | None = None) -> tuple[CommandRecord, ExecOutput]:
        command = shlex.join(argv)
        async with self._locks[name]:
            port = self._reachable_port(name)
            record = self.registry.begin(name, command[:200],
                                         len(command) + len(stdin or b""))
            # busy before the command starts, so that whoever sees it running (a scale-down
            # choosing what to drain) sees the machine busy; the mark is cheap (not synced)
            if self.engine.projection.state_of(name) is InstanceState.READY:
                await self._mark(name, Verb.BUSY, "command in flight")
        output: ExecOutput | None = None
        error: str | None = None
        try:
            env = (await asyncio.to_thread(self.engine.store.load_spec, name)).env
            output = await self.runner(self.engine, name, port, argv_with_env(argv, env),
                                       stdin, timeout)
        except BoxuiError as exc:
            error = str(exc)
            raise
        finally:
            async with self._locks[name]:
                size = len(output.stdout) + len(output.stderr) if output else None
                code = output.exit_code if output else None
                await self.registry.finish(record.id, exit_code=code, response_size=size,
                                           error=error)
                if self.registry.in_flight(name) == 0 and \
                        self.engine.projection.state_of(name) is InstanceState.BUSY:
                    await self._mark(name, Verb.IDLE, "no command in flight")
        assert output is not None
        return record.model_copy(), output  # finished in place by the registry

    async def ssh_runner(self, engine: Engine, name: str, port: int, argv: list[str],
                         stdin: bytes | None, timeout: float | None) -> ExecOutput:
        """The product runner: a channel on the machine's kept SSH connection, made with
        the machine's own keys and pinned host key."""
        machine_dir = engine.dirs.machine_dir(name)
        tap = output_tap.get()
        out, err = _Tapped("stdout", tap), _Tapped("stderr", tap)
        try:
            code = await self.pool.exec(name, port, machine_dir,
                                        functools.partial(load_machine_keys, machine_dir),
                                        argv, out, err, stdin=stdin, timeout=timeout)
        except GuestImageError as exc:
            raise BoxuiError(f"{name} has no SSH keys boxui made ({exc})") from None
        return ExecOutput(code, out.getvalue(), err.getvalue())

    async def keep_connections(self) -> None:
        """Close a machine's kept connection as soon as it stops or goes, and all of them
        when cancelled (its owner shutting down). Runs for as long as its owner serves.

        A guest that exits also drops its connection by itself; this makes closing
        prompt and certain, rather than depending on how QEMU's forwarding ends it.
        """
        subscription = self.engine.subscribe()
        try:
            async for event in subscription:
                if isinstance(event, Missed):
                    self._forget_stopped()
                elif event.subject and _verb(event.type) in _CLOSE_CONNECTION_ON:
                    self.pool.forget(event.subject)
        finally:
            subscription.close()
            await self.pool.aclose()

    def _forget_stopped(self) -> None:
        """After missed events: drop the connection of every machine no longer running."""
        for name in self.pool.names():
            if self.engine.projection.state_of(name) not in (
                    InstanceState.READY, InstanceState.BUSY, InstanceState.DRAINING):
                self.pool.forget(name)

    def _reachable_port(self, name: str) -> int:
        state = self.engine.projection.state_of(name)
        if state is None:
            raise MachineNotFoundError(name)
        if state is InstanceState.DRAINING:
            raise MachineDrainingError(f"{name} is draining and takes no new commands")
        if state not in (InstanceState.READY, InstanceState.BUSY):
            raise MachineNotRunningError(f"{name} is {state.value}, not running; "
                                         f"start it with: boxui start {name}")
        port = self.engine.store.load_record(name).ssh_port
        if port is None:
            raise MachineNotRunningError(f"{name} has no SSH port recorded")
        return port

    async def _mark(self, name: str, verb: Verb, message: str) -> None:
        # it may have moved on (stopping, draining) meanwhile: that state wins
        with contextlib.suppress(IllegalTransitionError):
            await self.engine.transition(name, verb, message=message)


def _verb(event_type: str) -> Verb | None:
    """The instance verb of an event type (service and endpoint events have none)."""
    if not event_type.startswith(INSTANCE_TYPE_PREFIX):
        return None
    try:
        return Verb(event_type.removeprefix(INSTANCE_TYPE_PREFIX))
    except ValueError:
        return None
