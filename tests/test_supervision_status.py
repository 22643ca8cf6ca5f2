"""`ls` and `info` say truthfully whether a live supervisor watches a machine."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState, PersistedState, Verb
from backend.state.live_supervisor import live_supervisor
from backend.state.machine_store import LoadedMachine
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import StateDir
from backend.state.supervisor_lock import SupervisorLock, lock_holder
from boxui.cli.output import info_lines
from tests.conftest import BOXUI, cli_env, spec

# takes the lock, hands its descriptor to a long-lived child, prints the child's pid and
# exits: the kernel's lock table then names a dead holder while the lock stays held
_ORPHAN_LOCK = """
import os, subprocess, sys
from pathlib import Path
from backend.state.supervisor_lock import SupervisorLock
lock = SupervisorLock(Path(sys.argv[1]))
lock.acquire()
child = subprocess.Popen(["sleep", "60"], pass_fds=[lock._fd], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
"""


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                         env=cli_env(home), timeout=30)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out


@contextmanager
def orphaned_lock(dirs: StateDir) -> Iterator[tuple[int, int]]:
    """(dead holder pid, live child pid holding the lock)."""
    out = subprocess.run([sys.executable, "-c", _ORPHAN_LOCK, str(dirs.lock_file)],
                         capture_output=True, text=True, timeout=30,
                         cwd=Path(__file__).parent.parent, check=True)
    child = int(out.stdout)
    try:
        yield lock_holder(dirs.lock_file) or 0, child
    finally:
        psutil.Process(child).kill()


def test_no_lock_no_supervisor(dirs: StateDir) -> None:
    assert live_supervisor(dirs.lock_file) is None


def test_the_process_holding_the_lock_is_the_supervisor(dirs: StateDir) -> None:
    with SupervisorLock(dirs.lock_file):
        assert live_supervisor(dirs.lock_file) == psutil.Process().pid
    assert live_supervisor(dirs.lock_file) is None


def test_a_dead_holder_is_no_supervisor(dirs: StateDir) -> None:
    with orphaned_lock(dirs) as (dead, child):
        assert dead not in (0, child) and not _alive(dead)
        # the lock is held (by the child), and the table still names the dead pid...
        assert lock_holder(dirs.lock_file) == dead
        # ...which supervises nothing
        assert live_supervisor(dirs.lock_file) is None
        # a live process the lock file names counts only if it has the lock file open
        unrelated = subprocess.Popen(["sleep", "60"])
        try:
            dirs.lock_file.write_text(f"{unrelated.pid}\n")
            assert live_supervisor(dirs.lock_file) is None
        finally:
            unrelated.kill()
            unrelated.wait()
        # a process the lock was handed to, which names itself in the file, does
        dirs.lock_file.write_text(f"{child}\n")
        assert live_supervisor(dirs.lock_file) == child


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _machine(persisted: PersistedState, state: InstanceState, *,
             needs_recovery: bool = False) -> LoadedMachine:
    return LoadedMachine(name="vm", state=state, needs_recovery=needs_recovery,
                         record=RuntimeRecord(state=state, persisted=persisted, pid=4242))


@pytest.mark.parametrize(("machine", "pid", "wanted", "unwanted"), [
    (_machine(PersistedState.RUNNING, InstanceState.READY), 77,
     "supervisor:     supervised by pid 77", "recovery:"),
    (_machine(PersistedState.RUNNING, InstanceState.READY, needs_recovery=True), None,
     "recovery:       needed (will be checked when a supervisor starts)", "supervised by"),
    (_machine(PersistedState.STOPPED, InstanceState.STOPPED), 77,
     "supervisor:     pid 77", "recovery:"),
    (_machine(PersistedState.STOPPED, InstanceState.STOPPED), None,
     "supervisor:     not running", "recovery:"),
], ids=["running-supervised", "running-unsupervised", "stopped-supervised",
        "stopped-unsupervised"])
def test_info_lines_say_who_supervises(machine: LoadedMachine, pid: int | None, wanted: str,
                                       unwanted: str) -> None:
    text = "\n".join(info_lines(machine, pid))
    assert wanted in text and unwanted not in text
    if pid is None:
        assert "supervisor:     not running" in text


async def _running_machine(engine: Engine) -> None:
    await engine.create_machine(spec("vm"))
    await engine.transition("vm", Verb.BOOTING)
    await engine.transition("vm", Verb.READY, message="ssh answered")


async def test_ls_and_info_while_a_supervisor_runs_and_after(home: Path) -> None:
    engine = await Engine.open(home)
    me = psutil.Process().pid
    try:
        await _running_machine(engine)
        info = run(home, "info", "vm").stdout
        assert f"supervised by pid {me}" in info and "recovery:" not in info
        info_json = json.loads(run(home, "info", "vm", "--json").stdout)
        assert info_json["supervised_by"] == me and info_json["needs_recovery"] is False
        ls = run(home, "ls").stdout
        assert f"supervised by boxui pid {me}" in ls and "stopped*" not in ls
        [view] = json.loads(run(home, "ls", "--json").stdout)
        assert view["state"] == "ready" and view["needs_recovery"] is False
    finally:
        await engine.close()
    # no supervisor: the recorded process (none here) is not trusted, recovery is due
    info = run(home, "info", "vm").stdout
    assert "recovery:       needed" in info and "supervisor:     not running" in info
    assert "supervised by" not in info
    assert json.loads(run(home, "info", "vm", "--json").stdout)["supervised_by"] is None
    ls = run(home, "ls").stdout
    assert "stopped*" in ls and "supervised by" not in ls


async def test_ls_with_a_dead_lock_holder_is_unsupervised(home: Path, dirs: StateDir) -> None:
    """A lock outliving its holder must not make `ls` trust `state.json`."""
    engine = await Engine.open(home)
    try:
        await _running_machine(engine)
    finally:
        await engine.close()
    with orphaned_lock(dirs):
        [view] = json.loads(run(home, "ls", "--json").stdout)
        assert view["state"] == "stopped" and view["needs_recovery"] is True
        assert "recovery:       needed" in run(home, "info", "vm").stdout
