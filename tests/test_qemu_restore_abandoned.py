"""A snapshot load the QEMU driver gives up on ends with its wait: a warm pool member's
restore cut short (its daemon stopping, the deadline, its QEMU killed) must not leave a
load running that fails later with nobody to hear it ("Task exception was never
retrieved" in the daemon's log). The load itself is a stand-in here: no QEMU runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from backend.drivers.base import PendingRestore, VmHandle
from backend.drivers.errors import DriverError
from backend.drivers.process_identity import PidWatch
from backend.drivers.qemu import driver as qemu_driver
from backend.drivers.qemu.driver import QemuDriver


class DyingQemu:
    """QEMU's pidfd as the driver watches it: `kill()` ends the process."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.exited = False

    async def wait(self) -> None:
        await self.gone.wait()

    def kill(self) -> None:
        self.exited = True
        self.gone.set()


class Load:
    """The QMP load, waiting for `until` and then failing, as the real one does when its
    QEMU is killed and the connection drops; `convert` turns a cancellation into that
    failure too, as a QMP client that reports its lost connection over a cancel does."""

    def __init__(self, until: asyncio.Event, convert: bool) -> None:
        self.until, self.convert = until, convert
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self, handle: VmHandle, *_args: object) -> None:
        self.started.set()
        try:
            await self.until.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            if not self.convert:
                raise
        raise DriverError(f"{handle.name}: QEMU exited while loading the snapshot")


@contextlib.contextmanager
def unheard_errors() -> Iterator[list[str]]:
    """What the loop's exception handler is handed meanwhile (and at a full collection
    after): a task's exception nobody retrieved is reported there when it is freed."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(str(context["message"])))
    try:
        yield seen
        gc.collect()
    finally:
        loop.set_exception_handler(before)


async def restore_under_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: Load,
                            qemu: DyingQemu) -> asyncio.Future[None]:
    """The driver waiting for a member's restore (its wait, as a task), with `load` begun."""
    driver = QemuDriver()
    handle = VmHandle(name="pool-0a1b2c3d", pid=2**22 + 7, start_time=1.0, ssh_port=1,
                      boot_id="b1", accel="tcg", console_log=tmp_path / "console.log",
                      qmp_socket=tmp_path / "qmp.sock",
                      restore=PendingRestore(tmp_path / "snapshot.bin", -1))
    driver._live[handle.pid] = qemu_driver._Live(cast(PidWatch, qemu), None, None)
    monkeypatch.setattr(driver, "_restore", load)
    waiting = asyncio.ensure_future(driver.wait_ready(handle, 60))
    await load.started.wait()
    return waiting


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_restore_cancelled_midway_ends_its_load(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's daemon stops while a member restores: the wait is cancelled, then the
    pool kills the member's QEMU."""
    qemu = DyingQemu()
    load = Load(qemu.gone, convert=False)
    with unheard_errors() as seen:
        async with asyncio.timeout(10):
            waiting = await restore_under_way(tmp_path, monkeypatch, load, qemu)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            qemu.kill()
            await settle()
        del waiting
    assert load.cancelled, "the load was left running after its wait ended"
    assert seen == []


async def test_a_member_killed_mid_restore_leaves_no_unheard_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    qemu = DyingQemu()
    load = Load(asyncio.Event(), convert=True)  # no answer until it is cancelled
    with unheard_errors() as seen:
        async with asyncio.timeout(10):
            waiting = await restore_under_way(tmp_path, monkeypatch, load, qemu)
            qemu.kill()
            with pytest.raises(DriverError, match="QEMU exited while loading"):
                await waiting
            await settle()
        del waiting
    assert seen == []
