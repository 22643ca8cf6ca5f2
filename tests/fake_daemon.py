"""`python -m tests.fake_daemon`: the real `boxui daemon` over the fake driver, whose
"guests" are stand-in processes and whose exec runs commands on the host."""

from __future__ import annotations

import asyncio
import contextlib
import os

from backend.state.engine import Engine
from backend.supervision.supervisor import Supervisor
from boxui.daemon.serve import run_daemon
from tests.fake_driver import FakeBootFiles, FakeDriver, Script, fixed_accel
from tests.fake_exec import host_exec_runner

#: every stand-in guest takes this long to be "ready" (lets a test kill the daemon mid-boot)
BOOT_DELAY_ENV = "BOXUI_TEST_BOOT_DELAY"


class _SlowBootDriver(FakeDriver):
    def script(self, name: str) -> Script:
        script = super().script(name)
        script.boot_delay = float(os.environ.get(BOOT_DELAY_ENV, "0"))
        return script


def _fake(engine: Engine) -> Supervisor:
    return Supervisor(engine, _SlowBootDriver(), FakeBootFiles(), accel_for=fixed_accel)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_daemon(supervisor_factory=_fake, exec_runner=host_exec_runner))
