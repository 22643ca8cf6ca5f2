"""Provisioning: a machine's scripts, run once as root over SSH after its first boot.

The scripts are copied into the machine's directory when it is created (`provision/`),
so editing or deleting the host files later changes nothing. Whether they ran is one
atomically written record (`provision/state.json`: pending, running, done, failed), so
a restart, a re-adoption or a second supervisor never runs a script twice. A supervisor
that dies while a script runs leaves the record `running`; the next one cannot know how
far the script got (its SSH session died with the old supervisor), and running it again
is wrong for a script that is not idempotent, so it says `failed: interrupted` and
leaves re-running to the user (`boxui provision NAME`).

A failed script powers the guest off and leaves the machine `failed`, its reason the
last lines of output. Lima and Vagrant leave such a guest running; here `failed` is a
resting state whose process nobody vouches for (a restarted boxui would not re-adopt it
and `exec` refuses it), so a running guest under it would be half-supervised. The whole
output stays in `provision/output.log`; `boxui start` boots the machine again without
re-running anything and `boxui provision` re-runs the scripts once it is ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from backend.errors import BoxuiError
from backend.guest.machine_seed import load_machine_keys
from backend.state.atomic_write import atomic_write_bytes, atomic_write_text, fsync_file
from backend.state.engine import Engine
from backend.state.event_bus import Missed
from backend.state.events import SOURCE, CloudEvent, now_utc, verb_of
from backend.state.lifecycle import InstanceState, Verb
from backend.supervision.machine_exec import MachineNotRunningError
from backend.supervision.ssh_access import ByteSink
from backend.supervision.ssh_pool import SshPool
from backend.supervision.supervisor import Supervisor

log = logging.getLogger("boxui.provision")

PROVISION_DIR = "provision"
STATE_FILE = "state.json"
LOG_FILE = "output.log"
PROVISION_TYPE_PREFIX = "dev.boxui.provision.v1."
#: lines of output that make a failed machine's reason
REASON_LINES = 5
MAX_LINE = 500
#: a script is a script, not a payload (`boxui cp` is for files)
MAX_SCRIPT_BYTES = 1 << 20

Status = Literal["pending", "running", "done", "failed"]

#: runs one script (its bytes) in machine `name`, output to the sink; the exit code
ScriptRunner = Callable[[str, int, bytes, ByteSink], Awaitable[int]]
#: powers a machine off and records it `failed` with the reason given
FailMachine = Callable[[str, str], Awaitable[None]]


class ProvisionError(BoxuiError):
    code = "provision_failed"


class NoProvisionScriptsError(BoxuiError):
    code = "no_scripts"


class ProvisionRecord(BaseModel):
    status: Status
    scripts: list[str]
    exit_code: int | None = None
    reason: str | None = None


def provision_dir(machine_dir: Path) -> Path:
    return machine_dir / PROVISION_DIR


def read_scripts(paths: list[Path]) -> list[tuple[str, bytes]]:
    """The scripts' names and contents, read before the machine exists so that a missing
    or unreadable file is refused with nothing created."""
    scripts = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                info = os.fstat(fh.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise ProvisionError(f"provision: {path} is not a regular file")
                if info.st_size > MAX_SCRIPT_BYTES:
                    raise ProvisionError(f"provision: {path} is larger than "
                                         f"{MAX_SCRIPT_BYTES >> 20} MiB")
                scripts.append((path.name, fh.read(MAX_SCRIPT_BYTES + 1)))
        except OSError as exc:
            raise ProvisionError(f"provision: cannot read {path}: "
                                 f"{exc.strerror or exc}") from None
    return scripts


def install_scripts(machine_dir: Path, scripts: list[tuple[str, bytes]]) -> None:
    """Copy the scripts into the machine (each file atomic) and record them pending;
    the record is written last, so scripts without a record never run half-copied."""
    directory = provision_dir(machine_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    names = []
    for index, (name, data) in enumerate(scripts, 1):
        stored = f"{index:02d}-{name}"
        atomic_write_bytes(directory / stored, data, 0o600)
        names.append(stored)
    write_record(machine_dir, ProvisionRecord(status="pending", scripts=names))


def read_record(machine_dir: Path) -> ProvisionRecord | None:
    path = provision_dir(machine_dir) / STATE_FILE
    try:
        return ProvisionRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ProvisionError(f"{path}: unreadable or invalid ({str(exc).splitlines()[0]}); "
                             "fix or remove it") from None


def write_record(machine_dir: Path, record: ProvisionRecord) -> None:
    atomic_write_text(provision_dir(machine_dir) / STATE_FILE, record.model_dump_json())


def provision_event(kind: str, name: str, message: str, **data: Any) -> CloudEvent:
    return CloudEvent(id=str(uuid.uuid4()), source=SOURCE, type=PROVISION_TYPE_PREFIX + kind,
                      time=now_utc(), subject=name,
                      data={"machine": name, "message": message, **data})


class _Output:
    """A script's output: appended to the log file as it comes, each line an event, the
    last lines kept for a failure's reason."""

    def __init__(self, log_file: Any, emit: Callable[[str], None]) -> None:
        self._file = log_file
        self._emit = emit
        self._partial = b""
        self.tail: collections.deque[str] = collections.deque(maxlen=REASON_LINES)

    def write(self, data: bytes, /) -> None:
        self._file.write(data)
        self._file.flush()
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip("\r")[:MAX_LINE]
        self.tail.append(text)
        self._emit(text)


class _LineEvents:
    """A script's output lines as `output` events, in order, without holding up the
    output (a sink must not block): lines that arrive while one event is being written
    go out together in the next, so a chatty `apt-get` costs a few log writes, not one
    fsync a line."""

    def __init__(self, engine: Engine, name: str, script: str) -> None:
        self._engine, self._name, self._script = engine, name, script
        self._lines: list[str] = []
        self._task: asyncio.Future[None] | None = None

    def add(self, text: str) -> None:
        self._lines.append(text)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._lines:
            lines, self._lines = self._lines, []
            await self._engine.record_event(provision_event(
                "output", self._name, "\n".join(lines), script=self._script,
                lines=len(lines)))

    async def settle(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


class Provisioner:
    """Runs each machine's pending scripts once it is ready; one run per machine at a
    time, shared by whoever asks (the event watch, `create`, `boxui provision`)."""

    def __init__(self, engine: Engine, runner: ScriptRunner, fail: FailMachine) -> None:
        self.engine = engine
        self.runner = runner
        self.fail = fail
        self._runs: dict[str, asyncio.Task[ProvisionRecord]] = {}

    async def watch(self) -> None:
        """Provision machines as they become ready; first those already ready (re-adopted
        before this began), whose record says whether anything is left to do."""
        subscription = self.engine.subscribe()
        try:
            self._ensure_ready()
            async for event in subscription:
                if isinstance(event, Missed):  # a `ready` may be among them
                    self._ensure_ready()
                elif event.subject and verb_of(event.type) in (Verb.READY, Verb.ADOPTED):
                    self.ensure(event.subject)
        finally:
            subscription.close()
            for task in self._runs.values():  # left `running`: the next one says so
                task.cancel()

    def _ensure_ready(self) -> None:
        for name in self.engine.projection.names():
            if self.engine.projection.state_of(name) is InstanceState.READY:
                self.ensure(name)

    def ensure(self, name: str) -> asyncio.Task[ProvisionRecord]:
        """The run of `name`'s pending scripts (a finished no-op if none are pending)."""
        task = self._runs.get(name)
        if task is None or task.done():
            task = asyncio.ensure_future(self._run(name, again=False))
            task.add_done_callback(functools.partial(_log_failure, name))
            self._runs[name] = task
        return task

    async def provision(self, name: str) -> ProvisionRecord:
        """Run `name`'s scripts again (`boxui provision`), after any run in progress."""
        previous = self._runs.get(name)
        if previous is not None and not previous.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        task = asyncio.ensure_future(self._run(name, again=True))
        self._runs[name] = task
        return await asyncio.shield(task)

    async def _run(self, name: str, *, again: bool) -> ProvisionRecord:
        machine_dir = self.engine.dirs.machine_dir(name)
        record = await asyncio.to_thread(read_record, machine_dir)
        if record is None:  # a machine.toml written by hand (or by the app): copy now
            record = await asyncio.to_thread(self._install_from_spec, name)
        if record is None or not record.scripts:
            if again:
                raise NoProvisionScriptsError(f"{name} has no provision scripts")
            return ProvisionRecord(status="done", scripts=[])
        if record.status == "running" and not again:  # a supervisor died while it ran
            return await self._failed(name, record, None, "interrupted: boxui stopped while "
                                      "a provision script ran; re-run with: boxui provision "
                                      f"{name}")
        if record.status != "pending" and not again:
            return record
        if self.engine.projection.state_of(name) not in (InstanceState.READY,
                                                          InstanceState.BUSY):
            raise MachineNotRunningError(f"{name} is not running; start it first: "
                                         f"boxui start {name}")
        record = record.model_copy(update={"status": "running", "exit_code": None,
                                           "reason": None})
        await asyncio.to_thread(write_record, machine_dir, record)
        return await self._run_scripts(name, machine_dir, record)

    def _install_from_spec(self, name: str) -> ProvisionRecord | None:
        paths = self.engine.store.load_spec(name).provision
        if not paths:
            return None
        machine_dir = self.engine.dirs.machine_dir(name)
        install_scripts(machine_dir, read_scripts(paths))
        return read_record(machine_dir)

    async def _run_scripts(self, name: str, machine_dir: Path,
                           record: ProvisionRecord) -> ProvisionRecord:
        port = self.engine.store.load_record(name).ssh_port
        log_path = provision_dir(machine_dir) / LOG_FILE
        log_file = await asyncio.to_thread(log_path.open, "ab")
        with log_file:
            for index, script in enumerate(record.scripts, 1):
                data = await asyncio.to_thread((provision_dir(machine_dir) / script).read_bytes)
                what = f"script {index}/{len(record.scripts)} {script}"
                log_file.write(f"==> {what}\n".encode())
                await self.engine.record_event(provision_event(
                    "provisioning", name, f"running {what}", script=script))
                lines = _LineEvents(self.engine, name, script)
                output = _Output(log_file, lines.add)
                started = time.monotonic()
                try:
                    code = await self.runner(name, port or 0, data, output) if port else -1
                except BoxuiError as exc:
                    output.write(f"boxui: {exc}\n".encode())
                    code = -1
                output.close()
                seconds = round(time.monotonic() - started, 3)
                log_file.write(f"==> {script} exited {code} after {seconds} s\n".encode())
                await asyncio.to_thread(fsync_file, log_path)
                await lines.settle()
                await self.engine.record_event(provision_event(
                    "provisioned", name, f"{script} exited {code} after {seconds} s",
                    script=script, exit_code=code, duration_seconds=seconds))
                if code != 0:
                    tail = " | ".join(line for line in output.tail if line.strip())
                    return await self._failed(name, record, code,
                                              f"provision script {script} exited {code}: "
                                              f"{tail or 'no output'}")
        done = record.model_copy(update={"status": "done", "exit_code": 0})
        await asyncio.to_thread(write_record, machine_dir, done)
        return done

    async def _failed(self, name: str, record: ProvisionRecord, code: int | None,
                      reason: str) -> ProvisionRecord:
        failed = record.model_copy(update={"status": "failed", "exit_code": code,
                                           "reason": reason})
        await asyncio.to_thread(write_record, self.engine.dirs.machine_dir(name), failed)
        try:
            await self.fail(name, reason)
        except BoxuiError as exc:  # stopped or deleted meanwhile: the record says it
            log.warning("could not mark %s failed: %s", name, exc)
        return failed


def _log_failure(name: str, task: asyncio.Task[ProvisionRecord]) -> None:
    """A run nobody awaits (started by the watch) reports its error here."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("provisioning %s failed: %s", name, exc)


def start_provisioning(supervisor: Supervisor, pool: SshPool,
                       runner: ScriptRunner | None = None) -> Provisioner:
    """A provisioner watching `supervisor`'s machines for as long as it runs; failures
    power the machine off through it (see the module's docstring)."""

    async def fail(name: str, reason: str) -> None:
        await supervisor.stop_machine(name, note="provisioning failed", fail_reason=reason)

    provisioner = Provisioner(supervisor.engine,
                              runner or ssh_script_runner(supervisor.engine, pool), fail)
    supervisor.spawn(provisioner.watch(), "provisioning")
    return provisioner


def ssh_script_runner(engine: Engine, pool: SshPool) -> ScriptRunner:
    """The product runner: `sh -s` as root on the machine's kept SSH connection, the
    script on its stdin (any guest with a `sh` runs it; no file is left in the guest)."""

    async def run(name: str, port: int, script: bytes, sink: ByteSink) -> int:
        machine_dir = engine.dirs.machine_dir(name)
        keys = functools.partial(load_machine_keys, machine_dir)
        return await pool.exec(name, port, machine_dir, keys, ["sh", "-s"], sink, sink,
                               stdin=script)

    return run
