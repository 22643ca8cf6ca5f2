"""Real QEMU, no guest run: a VM that boxui left in the middle of a restore.

boxui starts QEMU with `-incoming defer` and then names the snapshot over QMP; if boxui
dies in between, QEMU waits for a load nobody will start. The next supervisor re-adopts
it (it is provably that VM) and must then say at once that it cannot become ready,
instead of waiting out the boot timeout for a console line that will never come.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from backend.drivers.base import AdoptRequest, LaunchSpec, VmHandle
from backend.drivers.errors import DriverError
from backend.drivers.qemu.driver import QemuDriver
from backend.guest.image_builder import build_default_image
from backend.supervision.ports import pick_free_port
from tests.conftest import IMAGE_CACHE

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed"),
]



async def test_a_vm_left_mid_restore_is_refused_at_once(tmp_path: Path) -> None:
    image = await build_default_image(IMAGE_CACHE)
    run_dir = Path(f"/tmp/bxr-{os.getpid()}")  # short: the QMP socket path
    snapshot = tmp_path / "snapshot.bin"
    snapshot.write_bytes(b"never loaded")
    console = tmp_path / "console.log"
    driver = QemuDriver()
    handle = await driver.start(LaunchSpec(
        name="half", vcpus=1, memory_mib=128, kernel=image.kernel, initrd=image.initrd,
        append="", accel="tcg", ssh_port=pick_free_port(), boot_id="b1",
        machine_dir=tmp_path, run_dir=run_dir, console_log=console, restore_from=snapshot))
    try:
        await driver.close(handle)  # boxui is gone; QEMU waits in "inmigrate"
        fresh = QemuDriver()
        adopted = await fresh.adopt(AdoptRequest(
            name="half", pid=handle.pid, start_time=handle.start_time,
            ssh_port=handle.ssh_port, boot_id="b1", accel="tcg", run_dir=run_dir,
            console_log=console))
        assert isinstance(adopted, VmHandle), adopted
        started = time.monotonic()
        with pytest.raises(DriverError, match=r"boxui stopped while restoring its snapshot "
                                              r"\(QEMU is inmigrate\); start it again"):
            await fresh.wait_ready(adopted, 60)
        assert time.monotonic() - started < 5
        await fresh.close(adopted)
    finally:
        psutil.Process(handle.pid).kill()
        shutil.rmtree(run_dir, ignore_errors=True)
