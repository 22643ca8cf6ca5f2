"""A Debian machine on its own disk, with real QEMU under TCG, driven through the CLI:
the filesystem grows to the disk, synced data survives a SIGKILL of QEMU, a stopped disk
grows (never shrinks), and `rm` takes the disk with it."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import IMAGE_CACHE
from tests.debian_image import IMAGE_NAME, build_image
from tests.vm_helpers import VM_MARKS, boxui, info

pytestmark = [*VM_MARKS, pytest.mark.skipif(
    shutil.which("mmdebstrap") is None or shutil.which("qemu-img") is None,
    reason="needs mmdebstrap and qemu-img (bin/setup installs them)")]


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """Built once per host (minutes), kept in the shared guest cache."""
    return build_image(IMAGE_CACHE)


def _root_size(home: Path, name: str) -> int:
    out = boxui(home, "exec", name, "--", "df", "-B1", "--output=size", "/")
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def _wait_state(home: Path, name: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state: str = info(home, name)["state"]
        if state in states:
            return state
        time.sleep(0.2)
    raise AssertionError(f"{name} not in {states} after {timeout} s")


def test_disk_machine_keeps_synced_data_grows_and_is_removed(vm_home: Path,
                                                             debian_image: Path) -> None:
    created = boxui(vm_home, "create", "deb1", "--image", IMAGE_NAME, "--disk", "2G")
    assert created.returncode == 0, created.stderr
    disk = vm_home / "machines" / "deb1" / "disk.qcow2"
    assert disk.is_file()
    assert _root_size(vm_home, "deb1") > 1900 * (1 << 20)  # grown from the image's 1G
    wrote = boxui(vm_home, "exec", "deb1", "--", "sh", "-c",
                  "echo kept > /root/kept && sync")
    assert wrote.returncode == 0, wrote.stderr

    pid = info(vm_home, "deb1")["record"]["pid"]
    qemu = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([qemu], timeout=10)
    _wait_state(vm_home, "deb1", {"failed", "crashed", "stopped"})
    assert boxui(vm_home, "start", "deb1").returncode == 0
    kept = boxui(vm_home, "exec", "deb1", "--", "cat", "/root/kept")
    assert kept.returncode == 0 and kept.stdout == "kept\n", kept.stderr

    assert boxui(vm_home, "stop", "deb1").returncode == 0
    shrink = boxui(vm_home, "disk", "resize", "deb1", "1G")
    assert shrink.returncode == 1 and "only growing" in shrink.stderr
    assert boxui(vm_home, "disk", "resize", "deb1", "3G").returncode == 0
    assert info(vm_home, "deb1")["disk"]["usage"]["virtual_bytes"] == 3 << 30
    assert boxui(vm_home, "start", "deb1").returncode == 0
    assert _root_size(vm_home, "deb1") > 2900 * (1 << 20)
    again = boxui(vm_home, "exec", "deb1", "--", "cat", "/root/kept")
    assert again.stdout == "kept\n"

    removed = boxui(vm_home, "rm", "--force", "deb1")
    assert removed.returncode == 0, removed.stderr
    assert not disk.exists()
    assert (debian_image / "rootfs.ext4").is_file()  # the shared base stays
