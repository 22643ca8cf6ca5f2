"""One cell's steps, run by the daemon as a task of its supervisor: identity, inputs,
command, export, destroy, each recorded as a cell event before the next begins.

The client that asked only follows: its lines come from a queue. A cancel (Ctrl-C in
`boxui run`, or the client gone) stops the step in progress, records it failed with the
reason `cancelled`, and still destroys the machine. A supervisor shutting down cancels
the task without a cancel asked for: then nothing more is done here and the next
supervisor's recovery finishes the cell (`CellService.recover`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from backend.cells.guest_files import GuestFiles
from backend.cells.models import CellLine, CellRequest
from backend.errors import BoxuiError
from backend.state.cell_projection import CellVerb, CellView
from backend.state.machine_spec import MachineSpec
from backend.supervision.machine_exec import MachineExec, output_tap
from backend.supervision.supervisor import Supervisor

log = logging.getLogger("boxui.cells")
T = TypeVar("T")
Record = Callable[..., Awaitable[CellView]]


class _Stopped(Exception):
    """A step failed or was cancelled, and said so in the log: go on to destroy."""


@dataclass
class CellRun:
    id: str
    name: str
    request: CellRequest
    spec: MachineSpec
    #: whether the machine is restored from a template's snapshot (else cold-booted)
    restores: bool
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False

    def __post_init__(self) -> None:
        self.lines: asyncio.Queue[CellLine] = asyncio.Queue()
        self.ended = asyncio.Event()

    def cancel(self) -> None:
        """Stop the cell and destroy its machine (once; a no-op after it ended)."""
        if self.task is not None and not self.cancel_requested and not self.ended.is_set():
            self.cancel_requested = True
            self.task.cancel()


class CellSteps:
    def __init__(self, run: CellRun, supervisor: Supervisor, machine_exec: MachineExec,
                 record: Record) -> None:
        self.run = run
        self.supervisor = supervisor
        self.exec = machine_exec
        self._record = record
        self.files = GuestFiles(machine_exec, run.name, sftp=run.spec.image is not None)
        self.created = False

    async def __call__(self) -> None:
        run = self.run
        try:
            await self._record(CellVerb.STARTED, argv=run.request.argv, keep=run.request.keep,
                               source=_source(run.request),
                               inputs=[i.guest_path for i in run.request.inputs],
                               exports=[e.guest_path for e in run.request.exports])
            try:
                await self._identity()
                await self._inputs()
                code = await self._command()
                if code is not None:
                    await self._exports()
            except _Stopped:
                pass
            view = await self._destroy()
            run.lines.put_nowait(CellLine(type="result", cell=view))
        except BoxuiError as exc:
            run.lines.put_nowait(CellLine(type="error", code=exc.code, message=str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: one line for the client, the traceback logged
            log.exception("cell %s failed", run.name)
            run.lines.put_nowait(CellLine(type="error", code="internal",
                                          message=f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            run.ended.set()

    async def _step(self, failed: CellVerb, body: Awaitable[T]) -> T:
        """`body`'s result; a failure or a cancel is recorded as `failed` and stops here."""
        try:
            return await body
        except asyncio.CancelledError:
            if not self.run.cancel_requested:
                raise  # the supervisor is going: its successor's recovery finishes this
            _uncancel()
            await self._record(failed, reason="cancelled", outcome="cancelled")
        except (BoxuiError, OSError) as exc:
            outcome = "timed_out" if isinstance(exc, CellTimeoutError) else "failed"
            await self._record(failed, reason=str(exc), outcome=outcome)
        raise _Stopped

    async def _identity(self) -> None:
        started = time.monotonic()

        async def make() -> None:
            await self.supervisor.engine.create_machine(self.run.spec)
            self.created = True
            await self.supervisor.start_machine(self.run.name)

        await self._step(CellVerb.IDENTITY_FAILED, make())
        await self._record(CellVerb.MATERIALIZED, machine=self.run.name,
                           how="restore" if self.run.restores else "cold boot",
                           seconds=round(time.monotonic() - started, 3))

    async def _inputs(self) -> None:
        if not self.run.request.inputs:
            return

        async def copy() -> list[dict[str, Any]]:
            return [{"guest_path": i.guest_path,
                     "size_bytes": await self.files.put(i.host_path, i.guest_path)}
                    for i in self.run.request.inputs]

        copied = await self._step(CellVerb.INPUTS_FAILED, copy())
        await self._record(CellVerb.INPUTS_COPIED, files=copied)

    async def _command(self) -> int | None:
        """The exit code; None when the command did not finish (the failure recorded)."""
        request, started = self.run.request, time.monotonic()
        streamed = False

        def tap(stream: str, data: bytes) -> None:
            nonlocal streamed
            streamed = True
            self._output(stream, data)

        async def command() -> int:
            token = output_tap.set(tap)
            try:
                async with asyncio.timeout(request.timeout):
                    _, output = await self.exec.run(self.run.name, request.argv, origin="run")
            finally:
                output_tap.reset(token)
            if not streamed:  # a runner that hands over output only at the end
                self._output("stdout", output.stdout)
                self._output("stderr", output.stderr)
            return output.exit_code

        try:
            code = await self._step(CellVerb.COMMAND_FAILED, _timed(command(), request.timeout))
        except _Stopped:
            return None
        await self._record(CellVerb.COMMAND_COMPLETED, exit_code=code,
                           seconds=round(time.monotonic() - started, 3))
        return code

    def _output(self, stream: str, data: bytes) -> None:
        if data:
            self.run.lines.put_nowait(CellLine(
                type="output", stream="stderr" if stream == "stderr" else "stdout",
                data_b64=base64.b64encode(data).decode()))

    async def _exports(self) -> None:
        if not self.run.request.exports:
            return

        async def copy() -> list[dict[str, Any]]:
            return [(await self.files.get(e.guest_path, e.host_dir)).model_dump()
                    for e in self.run.request.exports]

        artifacts = await self._step(CellVerb.EXPORT_FAILED, copy())
        await self._record(CellVerb.EXPORTED, artifacts=artifacts)

    async def _destroy(self) -> CellView:
        run = self.run
        engine = self.supervisor.engine
        # only a machine this cell made: a name taken meanwhile is someone else's
        exists = self.created and (engine.store.exists(run.name)
                                   or engine.projection.state_of(run.name) is not None)
        keep = run.request.keep and bool(exists)
        if exists and not run.request.keep:
            await self.supervisor.delete_machine(run.name, force=True)
        extra: dict[str, Any] = {"kept": keep}
        if run.cancel_requested:
            extra |= {"reason": "cancelled", "outcome": "cancelled"}
        return await self._record(CellVerb.DESTROYED, **extra)


async def _timed(body: Awaitable[int], timeout: float | None) -> int:
    """A command past its deadline is a failure that says so (the guest's command ends
    with the machine, which is destroyed next)."""
    try:
        return await body
    except TimeoutError:
        raise CellTimeoutError(f"the command timed out after {timeout:g} s") from None


class CellTimeoutError(BoxuiError):
    code = "timed_out"


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _source(request: CellRequest) -> str:
    if request.template is not None:
        return f"template {request.template}"
    if request.image is not None:
        return f"image {request.image}"
    return "default"
