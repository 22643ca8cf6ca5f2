"""Exec runners for tests: the fake driver's guests are imaginary, so a command "in the
guest" runs on the host instead (real process, real exit code), or waits on a gate the
test opens, which makes in-flight work deterministic without timing."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from backend.state.engine import Engine
from backend.supervision.machine_exec import ExecOutput


async def host_exec_runner(engine: Engine, name: str, port: int, argv: list[str],
                           stdin: bytes | None, timeout: float | None) -> ExecOutput:
    if is_kill_script(argv):  # it scans /proc: never on the host (nothing here is marked)
        return ExecOutput(0, b"0\n", b"")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), timeout)
    assert proc.returncode is not None
    return ExecOutput(proc.returncode, out, err)


class GatedRunner:
    """`["hold", key]` waits until `release(key)`; anything else runs on the host."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def release(self, key: str) -> None:
        self.gates[key].set()

    async def __call__(self, engine: Engine, name: str, port: int, argv: list[str],
                       stdin: bytes | None, timeout: float | None) -> ExecOutput:
        command = _without_env(argv)
        if command[0] == "hold":
            self.entered[command[1]].set()
            await self.gates[command[1]].wait()
            return ExecOutput(0, f"released {command[1]}\n".encode(), b"")
        return await host_exec_runner(engine, name, port, argv, stdin, timeout)


def is_kill_script(argv: list[str]) -> bool:
    """Whether `argv` is `kill_marked_argv`'s, which kills by what it finds in /proc."""
    return argv[:2] == ["sh", "-c"] and len(argv) == 3 and \
        argv[2].startswith("m=BOXUI_COMMAND=")


def _without_env(argv: list[str]) -> list[str]:
    """The command itself, without the `env K=V ...` a service instance's exec gets."""
    if argv[0] != "env":
        return argv
    rest = argv[1:]
    while rest and "=" in rest[0]:
        rest = rest[1:]
    return rest
