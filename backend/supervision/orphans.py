"""Hypervisors of this state dir that no machine owns: found, reported, and killed.

A QEMU boxui let go of (its machine deleted, its QMP hung so it was not re-adopted, a
second one from a run that was cut short) holds memory, host ports and a guest nobody
can reach, and nothing would ever show it again. Each QEMU boxui starts carries its
machine's identity arguments (`identity_args`: the machine's name and its QMP socket,
which lies in this state dir), so a scan of the host's processes finds every one of
them. One is an orphan when its machine does not exist, is not running, or runs another
process. Killing one needs the same proof as any signal boxui sends: pid, start time
and those arguments, checked again once a pidfd pins the process.

Warm pool members carry the same arguments with the member's name and a QMP socket in
the pools' run dir, and keep them when a machine claims one. Such a process is held by
its member's record (`member.json`, which names its pid) or by the machine that claimed
it (its record's `launched_as` while it runs it; its run dir's `launched-as.json`, moved
in by the claim, after); with neither it is an orphan too. A scan for one machine finds
the member it claimed as well, so a claimed QEMU left behind is that machine's leftover.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
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
from backend.supervision.pool_paths import (
    MEMBER_FILE,
    launched_member,
    member_run_dir,
    members_root,
)

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
    #: launched as a warm pool member: `machine` is then the member's name, which it
    #: keeps after a machine claims it
    member: bool = False

    def run_dir(self, dirs: StateDir) -> Path:
        """The run dir its QMP socket was made in, as its command line names it."""
        if self.member:
            return member_run_dir(dirs, self.machine)
        return dirs.machine_run_dir(self.machine)


@dataclass(frozen=True)
class Orphan:
    process: HypervisorProcess
    #: why no machine owns it, for a person
    reason: str

    def as_json(self, action: str) -> dict[str, Any]:
        return {"pid": self.process.pid, "machine": self.process.machine,
                "reason": self.reason, "action": action}


def scan(dirs: StateDir, machine: str | None = None) -> list[HypervisorProcess]:
    """Every live hypervisor (QEMU, or a stand-in) of this state dir, and warm pool
    members'; or of one machine, with the member it claimed last (that QEMU still
    carries the member's name: see `launched_member`).

    Command lines are read straight from /proc, and only a match costs more: a stop or a
    delete scans, and psutil's per-process objects would cost ~100x as much."""
    found = []
    claimed = launched_member(dirs, machine) if machine is not None else None
    for pid, cmdline in _cmdlines():
        name = _machine_of(cmdline)
        if name is None:
            continue
        if machine is None:
            kinds: tuple[bool, ...] = (False, True)
        elif name in (machine, claimed):
            kinds = (name != machine,)
        else:
            continue
        for process in (HypervisorProcess(pid, 0.0, name, member) for member in kinds):
            if all(arg in cmdline for arg in identity_args(name, process.run_dir(dirs))):
                started = start_time_of(pid)  # None for a zombie, or one gone meanwhile
                if started is not None:
                    found.append(replace(process, start_time=started))
                break
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


Owner = Callable[[str], tuple[InstanceState | None, int | None]]


@dataclass(frozen=True)
class PoolHolders:
    """Who holds each warm pool member's process, as the records on disk say."""

    #: member -> the pid its member.json records (None: not started yet, or unreadable)
    members: dict[str, int | None]
    #: member -> the machine whose current run it is (its record's `launched_as`)
    claimed: dict[str, str]

    @classmethod
    def load(cls, dirs: StateDir, store: MachineStore) -> PoolHolders:
        """The members' records first, then the machines': a claim records the machine
        before it removes the member's record, so a member moving between the two is
        seen in one of them."""
        members: dict[str, int | None] = {}
        root = members_root(dirs)
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:  # no pool was ever kept here
            names = []
        for name in names:
            try:
                pid = json.loads((root / name / MEMBER_FILE).read_bytes()).get("pid")
                members[name] = pid if isinstance(pid, int) else None
            except (OSError, ValueError, AttributeError):
                members[name] = None  # its pool says the same: nothing proven, nothing killed
        claimed = {}
        for machine in store.names():
            try:
                launched_as = store.load_record(machine).launched_as
            except BoxuiError:
                launched_as = None
            # once the machine no longer runs it, only its run dir remembers the claim
            launched_as = launched_as or launched_member(dirs, machine)
            if launched_as is not None:
                claimed[launched_as] = machine
        return cls(members, claimed)

    def reason(self, process: HypervisorProcess, owner: Owner) -> str | None:
        """Why no member record and no machine holds this member's process, or None."""
        name = process.machine
        machine = self.claimed.get(name)
        if machine is not None:
            why = orphan_reason(replace(process, machine=machine, member=False),
                                *owner(machine))
            return None if why is None else f"warm pool member {name}, claimed: {why}"
        if name not in self.members:
            return f"no warm pool member {name}, and no machine claimed it"
        recorded = self.members[name]
        if recorded is not None and recorded != process.pid:
            return f"warm pool member {name} runs pid {recorded}, not this one"
        return None


def find_orphans(found: list[HypervisorProcess], owner: Owner,
                 pool: PoolHolders | None = None) -> list[Orphan]:
    """`owner(name)`: the machine's state and the pid of its current run (None if not
    known yet); `pool`: who holds warm pool members (without it none is judged)."""
    orphans = []
    for process in found:
        if process.member:
            reason = pool.reason(process, owner) if pool is not None else None
        else:
            reason = orphan_reason(process, *owner(process.machine))
        if reason is not None:
            orphans.append(Orphan(process, reason))
    return orphans


def recorded_owner(store: MachineStore) -> Owner:
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
    required = identity_args(process.machine, process.run_dir(dirs))
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
