"""Hypervisors of this state dir that no machine owns: found, reported, and killed.

A QEMU boxui let go of (its machine deleted, its QMP hung so it was not re-adopted, a
second one from a run that was cut short) holds memory, host ports and a guest nobody
can reach, and nothing would ever show it again. Each QEMU boxui starts carries its
machine's identity arguments (`identity_args`: the machine's name and its QMP socket,
which lies in this state dir), so a scan of the host's processes finds every one of
them. One is an orphan when its machine does not exist, is not running, or runs another
process. Killing one needs the same proof as any signal boxui sends: pid, start time
and those arguments, checked again once a pidfd pins the process.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from backend.drivers.base import StopTimeouts
from backend.drivers.errors import DriverError
from backend.drivers.process_identity import start_time_of, watch_proven
from backend.drivers.qemu.driver import identity_args
from backend.drivers.stop_escalation import escalate
from backend.errors import BoxuiError, InvalidNameError
from backend.state.events import SOURCE, CloudEvent, now_utc
from backend.state.lifecycle import ACTIVE_STATES, InstanceState, PersistedState
from backend.state.machine_store import MachineStore
from backend.state.names import validate_name
from backend.state.state_dir import StateDir

ORPHAN_FOUND_TYPE = "dev.boxui.orphan.v1.found"
ORPHAN_KILLED_TYPE = "dev.boxui.orphan.v1.killed"
_LABEL = re.compile(r"boxui-(?P<name>[^,]+),process=boxui-(?P=name)")
#: an orphan has no QMP connection boxui could use: SIGTERM, then SIGKILL
_NO_QMP = StopTimeouts(acpi=0.0, quit=0.0, term=3.0, kill=5.0)


@dataclass(frozen=True)
class HypervisorProcess:
    """A live process carrying a machine's identity arguments for this state dir."""

    pid: int
    start_time: float
    machine: str


@dataclass(frozen=True)
class Orphan:
    process: HypervisorProcess
    #: why no machine owns it, for a person
    reason: str

    def as_json(self, action: str) -> dict[str, Any]:
        return {"pid": self.process.pid, "machine": self.process.machine,
                "reason": self.reason, "action": action}


def scan(dirs: StateDir, machine: str | None = None) -> list[HypervisorProcess]:
    """Every live hypervisor (QEMU, or a stand-in) of this state dir, or of one machine.

    Command lines are read straight from /proc, and only a match costs more: a stop or a
    delete scans, and psutil's per-process objects would cost ~100x as much."""
    found = []
    for pid, cmdline in _cmdlines():
        name = _machine_of(cmdline)
        if name is None or (machine is not None and name != machine):
            continue
        wanted = identity_args(name, dirs.machine_run_dir(name))
        started = start_time_of(pid)  # None for a zombie, or one gone meanwhile
        if started is not None and all(arg in cmdline for arg in wanted):
            found.append(HypervisorProcess(pid, started, name))
    return sorted(found, key=lambda p: p.pid)


def _cmdlines() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process whose argv carries a boxui machine label."""
    with os.scandir("/proc") as entries:
        pids = [int(entry.name) for entry in entries if entry.name.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                raw = fh.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b",process=boxui-" in raw:
            yield pid, [arg.decode(errors="replace") for arg in raw.rstrip(b"\0").split(b"\0")]


def _machine_of(cmdline: list[str]) -> str | None:
    for arg in cmdline:
        match = _LABEL.fullmatch(arg)
        if match is not None:
            try:
                return validate_name(match["name"])
            except InvalidNameError:
                return None
    return None


def orphan_reason(process: HypervisorProcess, state: InstanceState | None,
                  current_pid: int | None) -> str | None:
    """Why no machine owns `process`, or None when its machine does (or may: one being
    launched or adopted has no process yet, and is not judged)."""
    name = process.machine
    if state is None:
        return f"no machine {name} in this state dir"
    if state not in ACTIVE_STATES:
        return f"{name} is {state.value}"
    if current_pid is not None and current_pid != process.pid:
        return f"{name} runs pid {current_pid}, not this one"
    return None


def find_orphans(found: list[HypervisorProcess],
                 owner: Callable[[str], tuple[InstanceState | None, int | None]]
                 ) -> list[Orphan]:
    """`owner(name)`: the machine's state and the pid of its current run (None if not
    known yet)."""
    orphans = []
    for process in found:
        reason = orphan_reason(process, *owner(process.machine))
        if reason is not None:
            orphans.append(Orphan(process, reason))
    return orphans


def recorded_owner(store: MachineStore) -> Callable[[str], tuple[InstanceState | None,
                                                                  int | None]]:
    """Ownership as the machines' records tell it, for `boxui doctor` (which runs
    without a supervisor): a machine recorded as running owns its recorded pid."""
    def owner(name: str) -> tuple[InstanceState | None, int | None]:
        if not store.exists(name):
            return None, None
        try:
            record = store.load_record(name)
        except BoxuiError:
            return InstanceState.BROKEN, None
        if record.persisted is not PersistedState.RUNNING:
            return InstanceState.STOPPED, None
        return record.state, record.pid

    return owner


async def kill_process(dirs: StateDir, process: HypervisorProcess) -> str:
    """SIGTERM, then SIGKILL, a hypervisor proven to be the one scanned; what was done."""
    required = identity_args(process.machine, dirs.machine_run_dir(process.machine))
    watch = watch_proven(process.pid, process.start_time, required)
    if isinstance(watch, str):
        return f"not killed: {watch}"
    try:
        ending = await escalate(watch, _NO_QMP, powerdown=None, quit=None)
    except DriverError as exc:
        return f"not killed: {exc}"
    finally:
        watch.close()
    if ending.step is None:
        return "gone before it was signalled"
    return "killed (SIGTERM)" if ending.step == "term" else \
        f"killed (SIGKILL) after SIGTERM timeout ({_NO_QMP.term:g} s)"


def orphan_event(kind: str, orphan: Orphan, message: str) -> CloudEvent:
    name = orphan.process.machine
    return CloudEvent(id=str(uuid.uuid4()), source=SOURCE, type=kind, time=now_utc(),
                      subject=name, data={"machine": name, "pid": orphan.process.pid,
                                          "reason": orphan.reason, "message": message})
