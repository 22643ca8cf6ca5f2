"""The command registry: its steps, its journal on disk (torn, corrupt, compacted), its
retention setting, and exec recording every command in it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from backend.errors import BoxuiError
from backend.state.command_journal import (
    CONFIG_NAME,
    CommandJournal,
    Retention,
    load_retention,
)
from backend.state.command_record import (
    CommandState,
    IllegalCommandTransitionError,
    advance,
)
from backend.state.engine import Engine
from backend.state.events import now_utc
from backend.state.lifecycle import InstanceState, Verb
from backend.supervision.inflight_commands import CommandRegistry
from backend.supervision.machine_exec import ExecOutput, MachineExec
from backend.supervision.ssh_access import SshTimeoutError, kill_marked_argv
from tests.conftest import spec


def _registry(root: Path, retention: Retention | None = None) -> CommandRegistry:
    return CommandRegistry(CommandJournal(root / "commands", retention))


# --- steps -------------------------------------------------------------------------------

async def test_a_command_goes_pending_dispatched_succeeded(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    record = registry.begin("vm", ["echo", "hi"], stdin=b"abc")
    assert record.state is CommandState.PENDING and record.request_size_bytes == len("echo hi") + 3
    dispatched = registry.dispatch(record.id)
    assert dispatched.lease_expires_at is not None and dispatched.dispatched_at is not None
    assert registry.in_flight("vm") == 1
    done = await registry.finish(record.id, exit_code=0, response_size=3)
    assert done.state is CommandState.SUCCEEDED and done.lease_expires_at is None
    assert registry.in_flight("vm") == 0
    failed = registry.begin("vm", ["false"])
    registry.dispatch(failed.id)
    assert (await registry.finish(failed.id, exit_code=1)).state is CommandState.FAILED


async def test_illegal_steps_are_refused_and_change_nothing(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    record = registry.begin("vm", ["true"])
    registry.dispatch(record.id)
    await registry.finish(record.id, exit_code=0)
    with pytest.raises(IllegalCommandTransitionError, match="succeeded to dispatched"):
        registry.dispatch(record.id)
    with pytest.raises(IllegalCommandTransitionError):
        await registry.finish(record.id, exit_code=0)
    assert registry.get(record.id) is not None
    assert registry.get(record.id).state is CommandState.SUCCEEDED  # type: ignore[union-attr]
    # a finished record on disk is the same after a reload
    again = _registry(tmp_path).get(record.id)
    assert again is not None and again.state is CommandState.SUCCEEDED


def test_only_an_idempotent_command_with_attempts_left_goes_round_again(
        tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    plain = registry.begin("vm", ["rm", "x"])
    registry.dispatch(plain.id)
    with pytest.raises(IllegalCommandTransitionError, match="not idempotent"):
        registry.requeue(plain.id, "supervisor died")
    safe = registry.begin("vm", ["true"], idempotent=True, max_attempts=2)
    registry.dispatch(safe.id)
    assert registry.requeue(safe.id, "supervisor died").attempt == 2
    registry.dispatch(safe.id)
    with pytest.raises(IllegalCommandTransitionError, match="attempt 2 of 2 was the last"):
        registry.requeue(safe.id, "supervisor died")
    # pending -> succeeded skips the dispatch: refused; one that could not be
    # dispatched (it never ran) fails
    fresh = registry.begin("vm", ["true"])
    with pytest.raises(IllegalCommandTransitionError):
        advance(fresh, CommandState.SUCCEEDED)
    assert advance(fresh, CommandState.FAILED).state is CommandState.FAILED


def test_max_attempts_needs_idempotent_and_kept_input(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.begin("vm", ["x"], max_attempts=5).max_attempts == 1
    big = registry.begin("vm", ["cat"], stdin=b"x" * (65 * 1024), idempotent=True,
                         max_attempts=3)
    assert big.max_attempts == 1 and big.stdin_b64 is None
    small = registry.begin("vm", ["cat"], stdin=b"abc", idempotent=True, max_attempts=3)
    assert small.stdin_b64 == "YWJj"
    assert _registry(tmp_path).get(small.id).stdin_b64 == "YWJj"  # type: ignore[union-attr]


async def test_the_lease_is_renewed_while_it_runs(tmp_path: Path) -> None:
    registry = CommandRegistry(CommandJournal(tmp_path / "commands"),
                               lease=timedelta(seconds=0.3))
    record = registry.begin("vm", ["sleep"])
    first = registry.dispatch(record.id).lease_expires_at
    assert first is not None
    keeper = asyncio.create_task(registry.keep_lease(record.id))
    await asyncio.sleep(0.35)
    keeper.cancel()
    renewed = _registry(tmp_path).get(record.id)  # on disk too
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > first


# --- the journal on disk -----------------------------------------------------------------

async def test_a_torn_last_line_is_ignored_and_the_rest_kept(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    record = registry.begin("vm", ["true"])
    registry.dispatch(record.id)
    path = tmp_path / "commands" / "vm.jsonl"
    whole = path.read_bytes()
    await registry.finish(record.id, exit_code=0)
    finished_line = path.read_bytes()[len(whole):]
    # a supervisor killed mid-write: half the finishing line
    path.write_bytes(whole + finished_line[: len(finished_line) // 2])
    journal = CommandJournal(tmp_path / "commands")
    loaded = {r.id: r for r in journal.load()}
    assert loaded[record.id].state is CommandState.DISPATCHED
    assert any("skipped a bad command record" in note for note in journal.notes)
    assert list((tmp_path / "commands").glob("vm.jsonl.*.broken"))  # a copy, then repaired
    assert path.read_bytes()[-1:] == b"\n" and len(path.read_bytes().splitlines()) == 1


def test_a_flipped_bit_mid_journal_is_caught_not_believed(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    first = registry.begin("vm", ["one"])
    second = registry.begin("vm", ["two"])
    path = tmp_path / "commands" / "vm.jsonl"
    data = bytearray(path.read_bytes())
    data[data.index(b'"one"') + 1] ^= 0x01  # "one" -> "nne": the CRC no longer matches
    path.write_bytes(bytes(data))
    loaded = {r.id: r for r in CommandJournal(tmp_path / "commands").load(compact=False)}
    assert first.id not in loaded and loaded[second.id].argv == ["two"]


async def test_compaction_keeps_the_newest_version_of_each_kept_record(tmp_path: Path) -> None:
    registry = _registry(tmp_path, Retention(keep=5, max_age=None))
    ids = []
    for n in range(80):
        record = registry.begin("vm", ["echo", str(n)])
        registry.dispatch(record.id)
        await registry.finish(record.id, exit_code=0)
        ids.append(record.id)
    path = tmp_path / "commands" / "vm.jsonl"
    lines = path.read_bytes().splitlines()
    assert len(lines) < 80 * 3  # compacted at least once on the way
    reloaded = CommandJournal(tmp_path / "commands", Retention(keep=5, max_age=None)).load()
    assert [r.id for r in reloaded] == ids[-5:]
    assert all(r.state is CommandState.SUCCEEDED for r in reloaded)
    assert len(path.read_bytes().splitlines()) == 5  # compacted at load: one line each
    assert not list(path.parent.glob("*.boxui-tmp-*"))


async def test_retention_by_age_keeps_unfinished_and_removes_an_empty_journal(
        tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    old = registry.begin("gone", ["true"])
    registry.dispatch(old.id)
    await registry.finish(old.id, exit_code=0)
    running = registry.begin("vm", ["sleep"])
    registry.dispatch(running.id)
    later = now_utc() + timedelta(days=31)
    retention = Retention(keep=None, max_age=timedelta(days=30))
    kept = retention.kept([registry.get(old.id), registry.get(running.id)],  # type: ignore[list-item]
                          later)
    assert [r.id for r in kept] == [running.id]
    journal = CommandJournal(tmp_path / "commands", Retention(keep=None,
                                                             max_age=timedelta(0)))
    assert [r.id for r in journal.load()] == [running.id]
    assert not (tmp_path / "commands" / "gone.jsonl").exists()


def test_the_retention_setting_is_read_from_daemon_toml(tmp_path: Path) -> None:
    assert load_retention(tmp_path) == Retention()
    (tmp_path / CONFIG_NAME).write_text("[commands]\nkeep = 10\nkeep_days = 0\n")
    assert load_retention(tmp_path) == Retention(keep=10, max_age=None)
    (tmp_path / CONFIG_NAME).write_text("[commands]\nkeep = -1\n")
    with pytest.raises(BoxuiError, match="keep must be a number >= 0"):
        load_retention(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[commands]\nkep = 1\n")
    with pytest.raises(BoxuiError, match="unknown keys: kep"):
        load_retention(tmp_path)


# --- exec records every command ----------------------------------------------------------

async def _ready_vm(engine: Engine) -> None:
    await engine.create_machine(spec("vm"))
    await engine.transition("vm", Verb.BOOTING)
    await engine.transition("vm", Verb.READY, update=lambda r: setattr(r, "ssh_port", 2222))


async def test_exec_records_the_command_durably(engine: Engine) -> None:
    async def runner(engine: Engine, name: str, port: int, argv: list[str],
                     stdin: bytes | None, timeout: float | None) -> ExecOutput:
        return ExecOutput(3, b"out", b"er")

    await _ready_vm(engine)
    record, _ = await MachineExec(engine, runner).run("vm", ["false"], stdin=b"in",
                                                      timeout=30, idempotent=True,
                                                      max_attempts=2)
    assert record.state is CommandState.FAILED and record.exit_code == 3
    on_disk = MachineExec(engine, runner).registry.get(record.id)
    assert on_disk is not None
    assert (on_disk.state, on_disk.exit_code, on_disk.response_size_bytes, on_disk.attempt,
            on_disk.max_attempts, on_disk.idempotent) == (CommandState.FAILED, 3, 5, 1, 2, True)
    assert on_disk.deadline is not None and on_disk.dispatched_at is not None
    assert on_disk.completed_at is not None and on_disk.argv == ["false"]


async def test_a_passed_deadline_is_recorded_expired_with_the_reason(engine: Engine) -> None:
    async def runner(engine: Engine, name: str, port: int, argv: list[str],
                     stdin: bytes | None, timeout: float | None) -> ExecOutput:
        raise SshTimeoutError(f"command timed out after {timeout:g}s; killed in the guest "
                              "(2 processes)")

    await _ready_vm(engine)
    machine_exec = MachineExec(engine, runner)
    with pytest.raises(SshTimeoutError):
        await machine_exec.run("vm", ["sleep", "100"], timeout=0.5)
    [record] = machine_exec.registry.commands("vm")
    assert record.state is CommandState.EXPIRED and record.exit_code is None
    assert record.error is not None and record.error.startswith("deadline passed: ")
    assert "killed in the guest (2 processes)" in record.error
    assert engine.projection.state_of("vm") is InstanceState.READY  # idle again


async def test_a_caller_that_goes_away_cancels_and_kills_the_command(engine: Engine) -> None:
    started = asyncio.Event()
    seen: list[list[str]] = []

    async def runner(engine: Engine, name: str, port: int, argv: list[str],
                     stdin: bytes | None, timeout: float | None) -> ExecOutput:
        seen.append(argv)
        if argv[0] == "sleep":
            started.set()
            await asyncio.sleep(100)
        return ExecOutput(0, b"1\n", b"")

    await _ready_vm(engine)
    machine_exec = MachineExec(engine, runner)
    task = asyncio.create_task(machine_exec.run("vm", ["sleep", "100"]))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [record] = machine_exec.registry.commands("vm")
    assert record.state is CommandState.CANCELLED
    async with asyncio.timeout(5):
        while len(seen) < 2:
            await asyncio.sleep(0.01)
    assert seen[1][:2] == ["sh", "-c"] and record.id in seen[1][2]  # the kill, by its mark


# --- the kill in the guest ---------------------------------------------------------------

_KILL_PROBE = textwrap.dedent("""
    import subprocess, sys, time
    kill = sys.argv[1:]
    mark = "BOXUI_COMMAND=" + "ab12"
    tree = subprocess.Popen(["sh", "-c", f"export {mark}; sleep 101 | cat & "
                             "while true; do sleep 1; done"])
    near = subprocess.Popen(["sh", "-c", f"export {mark}3; sleep 102"])
    other = subprocess.Popen(["sh", "-c", "b=1; sleep 103"])
    time.sleep(1.5)  # every process of the three started, even on a loaded host
    done = subprocess.run(kill, capture_output=True, text=True, timeout=10)
    time.sleep(0.3)
    print(done.stdout.strip(), tree.poll(), near.poll(), other.poll())
""")


def test_the_kill_script_kills_exactly_the_marked_command_s_tree() -> None:
    """Run where it can do no harm: a PID namespace of its own, whose /proc shows only
    the probe's processes (the script kills by what it finds in /proc)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    probe = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child"]
    if subprocess.run([*probe, "true"], capture_output=True, timeout=10).returncode != 0:
        pytest.skip("no PID namespace for this user")
    out = subprocess.run([*probe, sys.executable, "-c", _KILL_PROBE,
                          *kill_marked_argv("ab12")],
                         capture_output=True, text=True, timeout=30)
    # the shell, the background sleep and cat (and the loop's sleep, if it was between
    # two); not the one marked ab123 (a longer id), nor one whose command line has a `;`
    killed, tree, near, other = out.stdout.split()
    assert killed in ("3", "4") and (tree, near, other) == ("-9", "None", "None"), out
