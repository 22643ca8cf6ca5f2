"""`python -m tests.fake_daemon`: the real `boxui daemon` over the fake driver, whose
"guests" are stand-in processes and whose exec runs commands on the host.

It takes the options with which a daemon is started in the background (`--home`,
`--ready-fd`, `--lock-fd`; `--background` is accepted and ignored: it logs to stderr),
so `spawn` can start it where it would start `boxui daemon` (the app's hand-over)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path

from backend.drivers.standin import GuestPlan
from backend.state.engine import Engine
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import SupervisorLock
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--background", action="store_true")
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args()
    lock = None
    if args.lock_fd is not None:
        lock = SupervisorLock.inherit(open_state_dir(args.home).lock_file, args.lock_fd)

    def ready() -> None:
        if args.ready_fd is not None:
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_daemon(args.home, supervisor_factory=_fake, lock=lock,
                               exec_runner=host_exec_runner, on_listening=ready))


if __name__ == "__main__":
    main()
