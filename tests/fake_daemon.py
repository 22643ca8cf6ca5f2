"""`python -m tests.fake_daemon`: the real `boxui daemon` over the fake driver, whose
"guests" are stand-in processes and whose exec runs commands on the host."""

from __future__ import annotations

import asyncio
import contextlib

from backend.engine import Engine
from backend.supervisor import Supervisor
from boxui.daemon import run_daemon
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.fake_exec import host_exec_runner


def _fake(engine: Engine) -> Supervisor:
    return Supervisor(engine, FakeDriver(), FakeBootFiles(), accel_for=fixed_accel)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_daemon(supervisor_factory=_fake, exec_runner=host_exec_runner))
