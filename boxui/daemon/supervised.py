"""A supervisor owned by this process: the daemon's, or a CLI command's own.

`boxui daemon` builds its supervisor here. When no daemon serves the state dir, a CLI
command that changes machines does without one: it takes the state dir's lock itself,
re-adopts what is running (crash recovery), does its work and lets go. VMs keep running
after the command exits; the next supervisor re-adopts them.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from backend.drivers.qemu.driver import QemuDriver
from backend.state.engine import Engine
from backend.supervision.boot_files import DefaultBootFiles
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.supervisor import Supervisor

T = TypeVar("T")


def progress_printer(name: str) -> Callable[[str, str], None]:
    def show(phase: str, message: str) -> None:
        click.echo(f"{name}: {phase}: {message}", err=True)

    return show


def make_supervisor(engine: Engine) -> Supervisor:
    return Supervisor(engine, QemuDriver(), DefaultBootFiles(engine.dirs.images))


async def with_supervisor(work: Callable[[Supervisor], Awaitable[T]]) -> T:
    engine = await Engine.open()
    try:
        for note in engine.startup_notes:
            click.echo(f"boxui: {note}", err=True)
        supervisor = make_supervisor(engine)
        async with supervisor.running(recover=recover_machines):
            return await work(supervisor)
    finally:
        await engine.close()
        sys.stderr.flush()
