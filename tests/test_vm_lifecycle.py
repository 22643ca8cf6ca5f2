"""End to end with real QEMU guests under TCG, driven through the CLI as a user would.

The supervisor is a real `boxui daemon` process that the test SIGKILLs; guests must
survive it and be re-adopted (same QEMU pid) by the next one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import BOXUI, cli_env

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed"),
]

IMAGE_CACHE = Path(os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache"))


@pytest.fixture
def vm_home(tmp_path: Path) -> Iterator[Path]:
    # short path: QMP sockets must fit in 108 bytes; images shared across the session
    home = Path(f"/tmp/bx-{os.getpid()}-{tmp_path.name[-12:]}")
    home.mkdir(mode=0o700)
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "images").symlink_to(IMAGE_CACHE)
    yield home
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(home) in arg for arg in proc.info["cmdline"] or []):
            proc.kill()
    shutil.rmtree(home, ignore_errors=True)


def boxui(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                         env=cli_env(home), timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def info(home: Path, name: str) -> dict[str, object]:
    return json.loads(boxui(home, "info", name, "--json").stdout)  # type: ignore[no-any-return]


def recorded_pid(machine: dict[str, object]) -> int:
    record = machine["record"]
    assert isinstance(record, dict) and isinstance(record["pid"], int), record
    return record["pid"]


def start_daemon(home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*BOXUI, "daemon"], env=cli_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "supervising" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("daemon did not start")


def qemu_pids(home: Path) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] and p.info["name"].startswith(("qemu", "boxui-"))
            and any(str(home) in a for a in p.info["cmdline"] or [])]


def test_boot_exec_supervisor_crash_readopt_stop(vm_home: Path) -> None:
    created = boxui(vm_home, "create", "vm1", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == "ready"
    uname = boxui(vm_home, "exec", "vm1", "--", "uname", "-r")
    assert uname.returncode == 0 and uname.stdout.strip().endswith("-amd64")
    pid = recorded_pid(info(vm_home, "vm1"))
    assert qemu_pids(vm_home) == [pid]

    daemon = start_daemon(vm_home)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    assert psutil.pid_exists(pid), "the guest must outlive a killed supervisor"

    started = time.monotonic()
    daemon = start_daemon(vm_home)
    try:
        adopt_seconds = time.monotonic() - started
        machine = info(vm_home, "vm1")
        assert machine["state"] == "ready"
        assert recorded_pid(machine) == pid
        assert machine["supervisor_pid"] == daemon.pid
        assert adopt_seconds < 5
        again = boxui(vm_home, "exec", "vm1", "--", "sh", "-c", "echo $((6 * 7)); exit 5")
        assert again.stdout.strip() == "42" and again.returncode == 5
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
    assert qemu_pids(vm_home) == [pid]
    stopped = boxui(vm_home, "stop", "vm1", "--json")
    assert json.loads(stopped.stdout)["state"] == "stopped", stopped.stderr
    assert qemu_pids(vm_home) == []
    events = [json.loads(line)["type"].rsplit(".", 1)[1]
              for line in boxui(vm_home, "events", "vm1", "--json").stdout.splitlines()]
    assert events[:4] == ["creating", "created", "booting", "ready"]
    assert events.count("adopted") == 3 and events[-2:] == ["stopping", "stopped"]


def test_qemu_killed_while_no_supervisor_is_crashed(vm_home: Path) -> None:
    assert boxui(vm_home, "create", "vm2", "--memory", "128").returncode == 0
    pid = recorded_pid(info(vm_home, "vm2"))
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=5)
    listed = json.loads(boxui(vm_home, "ls", "--json").stdout)
    assert listed[0]["state"] == "stopped" and "process is gone" in listed[0]["reason"]
    daemon = start_daemon(vm_home)
    try:
        machine = info(vm_home, "vm2")
        assert machine["state"] == "crashed"
        assert machine["reason"] == "process gone while boxui was down"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
    last = json.loads(boxui(vm_home, "events", "vm2", "--json", "-n", "1").stdout)
    assert last["type"].endswith(".crashed")
    assert boxui(vm_home, "start", "vm2").returncode == 0
    assert info(vm_home, "vm2")["state"] == "ready"
    assert boxui(vm_home, "rm", "--force", "vm2").returncode == 0
    assert qemu_pids(vm_home) == []
