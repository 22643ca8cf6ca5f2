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
import os
from collections import defaultdict
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from backend.errors import BoxuiError, IllegalTransitionError, MachineNotFoundError
from backend.guest.errors import GuestImageError
from backend.guest.machine_seed import load_machine_keys
from backend.state.command_journal import load_retention
from backend.state.engine import Engine
from backend.state.event_bus import Missed
from backend.state.events import INSTANCE_TYPE_PREFIX, now_utc
from backend.state.lifecycle import InstanceState, Verb
from backend.state.machine_spec import MachineSpec
from backend.supervision import exec_trace
from backend.supervision.inflight_commands import CommandRecord, CommandRegistry, CommandState
from backend.supervision.ssh_access import SshTimeoutError, kill_marked_argv
from backend.supervision.ssh_pool import SshPool

#: the registry command the current task is carrying (read by the product runner)
_COMMAND: ContextVar[str | None] = ContextVar("boxui_command", default=None)
#: seconds allowed for killing a command in the guest
KILL_TIMEOUT = 30.0


class MachineNotRunningError(BoxuiError):
    code = "not_running"


class MachineDrainingError(BoxuiError):
    code = "draining"


class DeadlineKillError(SshTimeoutError):
    """A command past its deadline, and what killing it in the guest did."""

    def __init__(self, message: str, kill_note: str) -> None:
        super().__init__(message)
        self.kill_note = kill_note


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
        self.registry = registry or CommandRegistry.open(
            engine.dirs.root, load_retention(engine.dirs.root))
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._background: set[asyncio.Task[object]] = set()
        self._specs: dict[str, tuple[tuple[int, int, int], MachineSpec]] = {}

    async def run(self, name: str, argv: list[str], *, stdin: bytes | None = None,
                  timeout: float | None = None, idempotent: bool = False,
                  max_attempts: int = 1, origin: str = "exec",
                  on_output: Callable[[ExecOutput], None] | None = None,
                  ) -> tuple[CommandRecord, ExecOutput]:
        """Run `argv` in `name`, recorded in the registry from before it is dispatched
        until it ends. `timeout` is its deadline: past it the command is killed in the
        guest and recorded `expired`. `idempotent` (with `max_attempts`) lets the next
        supervisor dispatch it again if this one dies while it runs. `on_output` is told
        the output the moment the command ends, before the record and the idle mark are
        written: a client waiting only for the output (`boxui exec`) need not wait for the
        bookkeeping too."""
        deadline = now_utc() + timedelta(seconds=timeout) if timeout else None
        # no await from the check to `begin`: nothing can drain or stop it in between
        port = self._reachable_port(name)
        record = self.registry.begin(name, argv, stdin=stdin, deadline=deadline,
                                     idempotent=idempotent, max_attempts=max_attempts,
                                     origin=origin)
        exec_trace.mark("pending written")
        busy = asyncio.ensure_future(self.mark_busy(name))  # while the channel opens
        return await self.carry(record, port, stdin, timeout, on_output, busy)

    async def mark_busy(self, name: str) -> None:
        """Busy while a command is in flight: a cue for people and for a scale-down
        choosing what to drain (which also counts the registry's commands, written before
        this). Marks are made in order under the machine's lock, each after checking
        what is in flight then, so a slow mark never leaves a machine in the wrong state."""
        async with self._locks[name]:
            exec_trace.mark("busy: lock taken")
            if self.registry.in_flight(name) and \
                    self.engine.projection.state_of(name) is InstanceState.READY:
                await self._mark(name, Verb.BUSY, "command in flight")
            exec_trace.mark("busy: marked")

    async def carry(self, record: CommandRecord, port: int, stdin: bytes | None,
                    timeout: float | None,
                    on_output: Callable[[ExecOutput], None] | None = None,
                    busy: asyncio.Future[None] | None = None,
                    ) -> tuple[CommandRecord, ExecOutput]:
        """Dispatch a `pending` command and record how it ends (also what recovery
        calls to dispatch an interrupted idempotent command again). The dispatched line
        is synced and the busy mark (`busy`) made while the channel opens and the command
        runs. `on_output` hears the answer once the line is synced (an answered command is
        on disk), without waiting for the busy mark: a mark rewrites the machine's record
        and `ls`'s cache, now and then folding that cache whole, which can take longer
        than the command and was the slow tail of `boxui exec`. The mark is finished
        before the record and the idle mark are written (they keep their order)."""
        name = record.machine
        output: ExecOutput | None = None
        error: str | None = None
        ended: CommandState | None = None
        lease: asyncio.Task[None] | None = None
        pending = [busy] if busy is not None else []
        try:
            spec = await self._spec(name)
            self.registry.dispatch(record.id, service=spec.service)
            exec_trace.mark("dispatched written")
            synced = asyncio.ensure_future(self.registry.flush(name))
            synced.add_done_callback(lambda _: exec_trace.mark("dispatched synced"))
            pending.append(synced)
            lease = asyncio.create_task(self.registry.keep_lease(record.id))
            token = _COMMAND.set(record.id)
            try:
                output = await self.runner(self.engine, name, port,
                                           argv_with_env(record.argv, spec.env), stdin, timeout)
                exec_trace.mark("command ended")
                await synced
                exec_trace.mark("bookkeeping done")
                if on_output is not None:
                    on_output(output)
            finally:
                _COMMAND.reset(token)
        except SshTimeoutError as exc:
            ended = CommandState.EXPIRED
            error = f"deadline of {timeout:g} s passed; {exc.kill_note}" \
                if isinstance(exc, DeadlineKillError) else f"deadline passed: {exc}"
            raise
        except BoxuiError as exc:
            error = str(exc)
            raise
        except asyncio.CancelledError:
            ended, error = CommandState.CANCELLED, "its caller went away; killed in the guest"
            self._in_background(self.kill_in_guest(name, port, record.id))
            raise
        finally:
            if lease is not None:
                lease.cancel()
            await asyncio.gather(*pending, return_exceptions=True)  # retrieved, in order
            size = len(output.stdout) + len(output.stderr) if output else None
            code = output.exit_code if output else None
            record = await self.registry.finish(record.id, exit_code=code, response_size=size,
                                                error=error, state=ended)
            exec_trace.mark("finished written")
            await self.settle(name)
            exec_trace.mark("idle marked")
        assert output is not None
        return record, output

    async def settle(self, name: str) -> None:
        """`ready` again once nothing is in flight in a `busy` machine."""
        async with self._locks[name]:
            if self.registry.in_flight(name) == 0 and \
                    self.engine.projection.state_of(name) is InstanceState.BUSY:
                await self._mark(name, Verb.IDLE, "no command in flight")

    async def kill_in_guest(self, name: str, port: int, command_id: str) -> str:
        """Kill every process of the command in the guest, on a channel of its own;
        says what it did (for the record's error), never raises."""
        token = _COMMAND.set(None)  # the kill is not the command: unmarked
        try:
            output = await self.runner(self.engine, name, port, kill_marked_argv(command_id),
                                       None, KILL_TIMEOUT)
        except BoxuiError as exc:
            return f"could not kill it in the guest: {exc}"
        finally:
            _COMMAND.reset(token)
        count = output.stdout.decode(errors="replace").strip() or "?"
        return f"killed in the guest ({count} processes)"

    def _in_background(self, work: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _spec(self, name: str) -> MachineSpec:
        """The machine's spec (its environment and service; `machine.toml` may be edited
        at any time): parsed again only when the file changed, so that a command does not
        pay a thread hop and a TOML parse each time."""
        path = self.engine.dirs.spec_path(name)
        try:
            st = os.stat(path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        cached = self._specs.get(name)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        spec = await asyncio.to_thread(self.engine.store.load_spec, name)
        if key is not None:
            self._specs[name] = (key, spec)
        return spec

    async def ssh_runner(self, engine: Engine, name: str, port: int, argv: list[str],
                         stdin: bytes | None, timeout: float | None) -> ExecOutput:
        """The product runner: a channel on the machine's kept SSH connection, made with
        the machine's own keys and pinned host key. A registry command is marked in the
        guest, and killed there (its whole tree) when its deadline passes."""
        machine_dir = engine.dirs.machine_dir(name)
        tap = output_tap.get()
        out, err = _Tapped("stdout", tap), _Tapped("stderr", tap)
        marker = _COMMAND.get()
        try:
            code = await self.pool.exec(name, port, machine_dir,
                                        functools.partial(load_machine_keys, machine_dir),
                                        argv, out, err, stdin=stdin, timeout=timeout,
                                        marker=marker)
        except GuestImageError as exc:
            raise BoxuiError(f"{name} has no SSH keys boxui made ({exc})") from None
        except SshTimeoutError as exc:
            if marker is None:
                raise
            note = await self.kill_in_guest(name, port, marker)
            raise DeadlineKillError(f"{exc}; {note}", note) from None
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
                    self._specs.pop(event.subject, None)
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
