"""The supervisor a daemon owns: the real QEMU driver and boxui's own boot files.

`boxui daemon` builds its supervisor here (tests give `run_daemon` a stand-in's instead).
"""

from __future__ import annotations

from backend.drivers.qemu.driver import QemuDriver
from backend.state.engine import Engine
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.supervisor import Supervisor


def make_supervisor(engine: Engine) -> Supervisor:
    return Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images))
