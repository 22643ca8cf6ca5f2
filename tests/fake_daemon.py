"""`python -m tests.fake_daemon`: the real `boxui daemon` over the fake driver, whose
"guests" are stand-in processes and whose exec runs commands on the host."""

from __future__ import annotations

import asyncio
import contextlib
import os

from backend.drivers.standin import GuestPlan
from backend.state.engine import Engine
from backend.supervision.supervisor import Supervisor
from boxui.daemon.serve import run_daemon
from tests.fake_driver import FakeBootFiles, FakeDriver, fixed_accel
from tests.fake_exec import host_exec_runner

#: every stand-in guest takes this long to be "ready" (lets a test kill the daemon mid-boot)
BOOT_DELAY_ENV = "BOXUI_TEST_BOOT_DELAY"


class _SlowBootDriver(FakeDriver):
    def plan(self, name: str) -> GuestPlan:
        plan = super().plan(name)
        plan.boot_delay = float(os.environ.get(BOOT_DELAY_ENV, "0"))
        return plan


def _fake(engine: Engine) -> Supervisor:
    return Supervisor(engine, _SlowBootDriver(), FakeBootFiles(), accel_for=fixed_accel)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_daemon(supervisor_factory=_fake, exec_runner=host_exec_runner))
