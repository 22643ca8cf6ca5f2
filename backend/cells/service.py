"""The daemon's cells: started on request, listed from their projection, and finished
by the next supervisor when one that ran them died.

Every check a request can fail (its name, its template or image, its files) is made in
`start`, before the cell's first event, so a refused cell leaves nothing anywhere. The
projection is read from the event log once, before the first cell event is written, and
then kept current by applying each event as it is logged.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

from backend.cells.models import CellLine, CellRequest
from backend.cells.run import CellRun, CellSteps
from backend.errors import BoxuiError, MachineExistsError
from backend.state.cell_projection import (
    CellProjection,
    CellStage,
    CellVerb,
    CellView,
    new_cell_event,
)
from backend.state.event_log import read_log
from backend.state.machine_spec import MachineSpec
from backend.state.names import validate_name
from backend.supervision.machine_disk import check_disk_request
from backend.supervision.machine_exec import MachineExec
from backend.supervision.supervisor import Supervisor
from backend.templates.machine_from_template import spec_from_template


class CellRequestError(BoxuiError):
    code = "invalid_request"


class CellNotFoundError(BoxuiError):
    code = "not_found"


class CellService:
    def __init__(self, supervisor: Supervisor, machine_exec: MachineExec) -> None:
        self.supervisor = supervisor
        self.exec = machine_exec
        self.runs: dict[str, CellRun] = {}
        self._projection: CellProjection | None = None
        self._loading = asyncio.Lock()

    async def projection(self) -> CellProjection:
        async with self._loading:
            if self._projection is None:
                scan = await asyncio.to_thread(read_log, self.supervisor.engine.dirs.event_log)
                self._projection = CellProjection.replay(scan.events)
            return self._projection

    async def cells(self) -> list[CellView]:
        return (await self.projection()).cells()

    async def record(self, cell_id: str, name: str, verb: CellVerb, **data: Any) -> CellView:
        """Check, log, then apply one cell step: the log is the commit point."""
        projection = await self.projection()
        data.setdefault("message", _describe(verb, name, data))
        event = new_cell_event(cell_id, name, verb, **data)
        projection.check(event)
        await self.supervisor.engine.record_event(event)
        projection.apply(event)
        view = projection.get(cell_id)
        assert view is not None
        return view

    async def start(self, request: CellRequest) -> CellRun:
        """Refuse what cannot run (before any event), then run the cell in a task."""
        cell_id = uuid.uuid4().hex
        name = validate_name(f"cell-{cell_id[:8]}" if request.name is None else request.name)
        await self._name_free(name)
        spec = await asyncio.to_thread(self._spec, name, request)
        restores = await asyncio.to_thread(self.supervisor.restore_plan, spec) is not None
        await asyncio.to_thread(_check_files, request)
        run = CellRun(cell_id, name, request, spec, restores)
        self.runs[cell_id] = run

        async def record(verb: CellVerb, **data: Any) -> CellView:
            data["message"] = _describe(verb, name, data)
            view = await self.record(cell_id, name, verb, **data)
            run.lines.put_nowait(CellLine(type="step", step=verb.value,
                                          message=data["message"]))
            return view

        run.task = self.supervisor.spawn(CellSteps(run, self.supervisor, self.exec, record)(),
                                         f"cell:{name}")
        run.task.add_done_callback(lambda _: self.runs.pop(cell_id, None))
        return run

    def cancel(self, cell_id: str) -> None:
        run = self.runs.get(cell_id)
        if run is None:
            raise CellNotFoundError(f"no running cell with id {cell_id!r}")
        run.cancel()

    async def _name_free(self, name: str) -> None:
        engine = self.supervisor.engine
        if engine.store.exists(name) or engine.projection.state_of(name) is not None:
            raise MachineExistsError(name)
        if any(c.name == name for c in (await self.projection()).unfinished()):
            raise MachineExistsError(name)

    def _spec(self, name: str, request: CellRequest) -> MachineSpec:
        dirs = self.supervisor.engine.dirs
        if request.template is not None:
            spec = spec_from_template(dirs, name, request.template)
        elif request.image is not None:
            spec = MachineSpec(name=name, image=validate_name(request.image), memory_mib=512)
            check_disk_request(dirs.images, spec)
        else:
            spec = MachineSpec(name=name)
        spec.env = dict(request.env)
        return spec

    async def recover(self) -> list[str]:
        """Finish every cell a dead supervisor left unfinished: its machine is deleted
        (unless the cell keeps it) and the cell marked destroyed with the step it was cut
        off in. Runs after crash recovery, so the machine is known (re-adopted or not)."""
        notes: list[str] = []
        for cell in (await self.projection()).unfinished():
            if cell.id in self.runs:
                continue
            engine = self.supervisor.engine
            exists = engine.store.exists(cell.name) or \
                engine.projection.state_of(cell.name) is not None
            if exists and not cell.keep:
                try:
                    await self.supervisor.delete_machine(cell.name, force=True)
                except BoxuiError as exc:  # left open: the next start tries again
                    notes.append(f"cell {cell.name}: its machine could not be deleted "
                                 f"({exc}); the next start tries again")
                    continue
            reason = f"interrupted: the supervisor died during {_during(cell)}"
            await self.record(cell.id, cell.name, CellVerb.DESTROYED, reason=reason,
                              outcome="interrupted", kept=bool(exists and cell.keep))
            notes.append(f"cell {cell.name}: {reason}")
        return notes


def _during(cell: CellView) -> str:
    """The step a cell was in, from the last one it finished."""
    if cell.stage is CellStage.IDENTITY_READY:
        return "copying its inputs" if cell.inputs else "its command"
    return {CellStage.STARTED: "identity (making its machine)",
            CellStage.INPUTS_COPIED: "its command",
            CellStage.COMMAND_COMPLETED: "export" if cell.exports else "destroy"
            }.get(cell.stage, "destroy")


def _check_files(request: CellRequest) -> None:
    """Each input a readable file and each export dir a writable dir, named absolutely."""
    for item in request.inputs:
        path = Path(item.host_path)
        if not path.is_absolute() or not path.is_file() or not os.access(path, os.R_OK):
            raise CellRequestError(f"--input {item.host_path}: not a readable file")
    for export in request.exports:
        path = Path(export.host_dir)
        if not path.is_absolute() or not path.is_dir() or not os.access(path, os.W_OK):
            raise CellRequestError(f"--export {export.guest_path}:{export.host_dir}: "
                                   "not a writable directory")


def _describe(verb: CellVerb, name: str, data: dict[str, Any]) -> str:
    """The step in words, for `boxui events`, the daemon's log and `boxui run`."""
    said = {CellVerb.STARTED: f"cell {name}: starting ({data.get('source')})",
            CellVerb.MATERIALIZED: f"machine {name} ready by {data.get('how')} "
                                   f"in {data.get('seconds')} s",
            CellVerb.INPUTS_COPIED: f"{len(data.get('files') or [])} input(s) copied in",
            CellVerb.COMMAND_COMPLETED: f"command exited {data.get('exit_code')} "
                                        f"after {data.get('seconds')} s",
            CellVerb.EXPORTED: "; ".join(f"exported {a['guest_path']} -> {a['host_path']} "
                                         f"({a['size_bytes']} bytes, sha256 {a['sha256']})"
                                         for a in data.get("artifacts") or []),
            CellVerb.DESTROYED: f"machine {name} "
                                + ("kept" if data.get("kept") else "destroyed")}
    message = said.get(verb) or f"{verb.value}: {data.get('reason')}"
    if verb is CellVerb.DESTROYED and data.get("reason"):
        message += f" ({data['reason']})"
    return message
