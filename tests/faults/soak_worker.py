"""A fork server for the soak: it imports boxui once, then forks one supervisor per
cycle, which the test SIGKILLs at a random moment. Forking skips the ~0.6 s import of a
fresh interpreter, so 100 cycles stay fast.

Protocol on stdin/stdout, one line each: `cycle HOME SEED ACKFILE` -> `pid N`; `exit`.
A cycle opens the engine (crash recovery included), then runs random operations against
the fake driver, writing `begin OP NAME` before and `ack OP NAME` after each one to
ACKFILE: an acknowledged operation is one whose `ack` line exists. `scale` sets the
desired replicas of the service SERVICE (which the test creates first) and is
acknowledged once that number is persisted; it waits for the instances to settle only
half the time, so later operations and the SIGKILL also land mid-reconciliation.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.services.manager import ServiceManager
from backend.services.scale_models import ScaleRequest
from backend.state.engine import Engine
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.machine_exec import MachineExec
from backend.supervision.supervisor import Supervisor
from tests.conftest import spec
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel

NAMES = ("m0", "m1", "m2", "m3")
SERVICE = "svc"
MAX_REPLICAS = 3
MAX_OPS = 200


@dataclass
class Cycle:
    sup: Supervisor
    services: ServiceManager
    rng: random.Random
    note: Callable[[str], None]


async def _create(c: Cycle, name: str) -> None:
    await c.sup.engine.create_machine(spec(name))


async def _start(c: Cycle, name: str) -> None:
    await c.sup.start_machine(name)


async def _stop(c: Cycle, name: str) -> None:
    await c.sup.stop_machine(name)


async def _delete(c: Cycle, name: str) -> None:
    await c.sup.delete_machine(name, force=True)


async def _scale(c: Cycle, name: str) -> None:
    replicas = c.rng.randrange(MAX_REPLICAS + 1)
    c.note(f"begin scale {SERVICE} {replicas}")
    response, generation = await c.services.scale(
        ScaleRequest(service=SERVICE, replicas=replicas))
    assert response.accepted and generation is not None, response.error
    c.note(f"ack scale {SERVICE} {replicas}")
    if c.rng.random() < 0.5:
        await c.services.wait_settled(SERVICE, generation)


#: the operations a soak cycle picks from; `scale` notes its own begin/ack lines
OPS: dict[str, Callable[[Cycle, str], Awaitable[None]]] = {
    "create": _create, "start": _start, "stop": _stop, "delete": _delete, "scale": _scale}


async def run_cycle(home: Path, seed: int, ack_path: Path) -> None:
    rng = random.Random(seed)
    fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def note(line: str) -> None:
        os.write(fd, f"{line}\n".encode())

    engine = await Engine.open(home)
    driver = FakeDriver()
    for name in NAMES:
        driver.script(name).boot_delay = rng.uniform(0.0, 0.03)
    sup = Supervisor(engine, driver, FakeBootFiles(), accel_for=fixed_accel)
    async with sup.running(recover=recover_machines):
        services = ServiceManager(sup, MachineExec(engine))
        await services.start()
        note("recovered")
        cycle = Cycle(sup, services, rng, note)
        for _ in range(MAX_OPS):
            op, name = rng.choice(sorted(OPS)), rng.choice(NAMES)
            if op != "scale":
                note(f"begin {op} {name}")
            try:
                await OPS[op](cycle, name)
            except BoxuiError as exc:
                note(f"refused {op} {name} {type(exc).__name__}")
                continue
            if op != "scale":
                note(f"ack {op} {name}")
    note("done")
    await engine.close()


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # cycles are reaped by the kernel
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "exit":
            return
        home, seed, ack_path = Path(words[1]), int(words[2]), Path(words[3])
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 0
            try:
                asyncio.run(run_cycle(home, seed, ack_path))
            except BaseException:
                with open(ack_path, "a") as fh:
                    fh.write("crashed " + traceback.format_exc().replace("\n", " | ") + "\n")
                code = 1
            os._exit(code)
        print(f"pid {pid}", flush=True)


if __name__ == "__main__":
    main()
