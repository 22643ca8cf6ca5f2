"""What `MachineExec.run` does around a command: the dispatched record written before the
channel opens and synced before the answer, the output handed on before the idle mark is
written and without waiting for the busy mark, marks that stay right when commands overlap, and the
machine's environment read again whenever `machine.toml` changes (parsed once per change,
not per command)."""

from __future__ import annotations

import asyncio

from backend.state.engine import Engine
from backend.state.event_bus import Subscription
from backend.state.events import CloudEvent
from backend.state.lifecycle import InstanceState, Verb
from backend.supervision.inflight_commands import CommandRegistry
from backend.supervision.machine_exec import ExecOutput, MachineExec
from tests.conftest import spec
from tests.fake_exec import GatedRunner


async def _ready_vm(engine: Engine, **kw: object) -> None:
    await engine.create_machine(spec("vm", **kw))
    await engine.transition("vm", Verb.BOOTING)
    await engine.transition("vm", Verb.READY, update=lambda r: setattr(r, "ssh_port", 2222))


class Recorder:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    async def __call__(self, engine: Engine, name: str, port: int, argv: list[str],
                       stdin: bytes | None, timeout: float | None) -> ExecOutput:
        self.argvs.append(argv)
        return ExecOutput(7, b"out", b"err")


def _verbs(subscription: Subscription) -> list[str]:
    verbs = []
    while (event := subscription.get_nowait()) is not None:
        if isinstance(event, CloudEvent):
            verbs.append(event.type.rsplit(".", 1)[-1])
    return verbs


async def test_the_output_is_handed_on_before_the_idle_mark(engine: Engine) -> None:
    await _ready_vm(engine)
    machine_exec = MachineExec(engine, runner=Recorder())
    subscription = engine.subscribe(machine="vm")
    seen: list[tuple[int, list[str]]] = []
    _record, output = await machine_exec.run(
        "vm", ["true"], on_output=lambda out: seen.append((out.exit_code, _verbs(subscription))))
    assert seen[0][0] == 7 and "idle" not in seen[0][1]  # answered before the idle mark
    assert output.stdout == b"out"
    assert engine.projection.state_of("vm") is InstanceState.READY
    assert seen[0][1] + _verbs(subscription) == ["busy", "idle"]
    subscription.close()


async def test_the_answer_does_not_wait_for_the_busy_mark(engine: Engine) -> None:
    """A mark rewrites the record and `ls`'s cache (folding it whole now and then): slower
    than a command at times, so the answer goes out without it, and idle still follows."""
    await _ready_vm(engine)
    machine_exec = MachineExec(engine, runner=Recorder())
    gate = asyncio.Event()
    real_mark = machine_exec._mark

    async def slow_mark(name: str, verb: Verb, message: str) -> None:
        if verb is Verb.BUSY:
            await gate.wait()
        await real_mark(name, verb, message)

    machine_exec._mark = slow_mark  # type: ignore[method-assign]
    subscription = engine.subscribe(machine="vm")
    answered = asyncio.Event()
    run = asyncio.create_task(machine_exec.run("vm", ["true"],
                                               on_output=lambda _: answered.set()))
    async with asyncio.timeout(10):
        await answered.wait()
    assert _verbs(subscription) == []  # answered while the busy mark is still under way
    gate.set()
    async with asyncio.timeout(10):
        await run
    assert _verbs(subscription) == ["busy", "idle"]
    subscription.close()


async def test_an_edited_environment_is_used_by_the_next_command(engine: Engine) -> None:
    await _ready_vm(engine, env={"A": "1"})
    runner = Recorder()
    machine_exec = MachineExec(engine, runner=runner)
    await machine_exec.run("vm", ["true"])
    await machine_exec.run("vm", ["true"])
    engine.store.save_spec(spec("vm", env={"A": "2", "B": "x"}))
    await machine_exec.run("vm", ["true"])
    assert runner.argvs == [["env", "A=1", "true"], ["env", "A=1", "true"],
                            ["env", "A=2", "B=x", "true"]]


async def test_dispatched_is_written_before_the_channel_and_synced_before_the_answer(
        engine: Engine) -> None:
    await _ready_vm(engine)
    registry = CommandRegistry.open(engine.dirs.root)
    synced = asyncio.Event()
    flushes: list[str] = []

    async def slow_flush(machine: str) -> None:
        await synced.wait()
        flushes.append(machine)

    registry.flush = slow_flush  # type: ignore[method-assign]
    lines_seen: list[bytes] = []
    entered = asyncio.Event()

    async def runner(engine: Engine, name: str, port: int, argv: list[str],
                     stdin: bytes | None, timeout: float | None) -> ExecOutput:
        lines_seen.append((engine.dirs.root / "commands" / "vm.jsonl").read_bytes())
        entered.set()
        return ExecOutput(0, b"", b"")

    machine_exec = MachineExec(engine, runner=runner, registry=registry)
    answered: list[list[str]] = []
    run = asyncio.create_task(machine_exec.run("vm", ["true"], on_output=lambda out:
                                               answered.append(list(flushes))))
    async with asyncio.timeout(10):
        await entered.wait()
    assert b'"state":"dispatched"' in lines_seen[0]  # on the file before the channel
    await asyncio.sleep(0.05)
    assert answered == []  # no answer before the sync
    synced.set()
    async with asyncio.timeout(10):
        await run
    assert answered == [["vm"]]


async def test_overlapping_commands_keep_the_machine_busy_until_the_last_ends(
        engine: Engine) -> None:
    await _ready_vm(engine)
    runner = GatedRunner()
    machine_exec = MachineExec(engine, runner=runner)
    subscription = engine.subscribe(machine="vm")
    first = asyncio.create_task(machine_exec.run("vm", ["hold", "a"]))
    second = asyncio.create_task(machine_exec.run("vm", ["hold", "b"]))
    async with asyncio.timeout(10):
        await runner.entered["a"].wait()
        await runner.entered["b"].wait()
        runner.release("a")
        await first
        assert engine.projection.state_of("vm") is InstanceState.BUSY  # b still runs
        runner.release("b")
        await second
    assert engine.projection.state_of("vm") is InstanceState.READY
    assert _verbs(subscription) == ["busy", "idle"]
    subscription.close()
