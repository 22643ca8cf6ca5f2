"""End to end with real QEMU guests under TCG, driven through the CLI as a user would.

The supervisor is a real `boxui daemon` process (the background one the CLI starts, then
foreground ones) that the test SIGKILLs; guests must survive it and be re-adopted (same
QEMU pid) by the next one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

from tests.vm_helpers import VM_MARKS, boxui, info, qemu_pids, start_daemon

pytestmark = VM_MARKS


def test_boot_exec_supervisor_crash_readopt_stop(vm_home: Path) -> None:
    created = boxui(vm_home, "create", "vm1", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == "ready"
    assert created.stderr.startswith("started boxui daemon, pid ")
    uname = boxui(vm_home, "exec", "vm1", "--", "uname", "-r")
    assert uname.returncode == 0 and uname.stdout.strip().endswith(("-amd64", "-boxui"))
    pid = info(vm_home, "vm1")["record"]["pid"]
    assert qemu_pids(vm_home) == [pid]

    background = json.loads(boxui(vm_home, "daemon", "status", "--json").stdout)["pid"]
    os.kill(background, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(background)], timeout=10)
    assert psutil.pid_exists(pid), "the guest must outlive a killed supervisor"
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
        assert machine["record"]["pid"] == pid
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
    assert boxui(vm_home, "daemon", "stop").returncode == 0


def test_qemu_killed_while_no_supervisor_is_crashed(vm_home: Path) -> None:
    assert boxui(vm_home, "create", "vm2", "--memory", "128").returncode == 0
    pid = info(vm_home, "vm2")["record"]["pid"]
    assert boxui(vm_home, "daemon", "stop").returncode == 0  # machines keep running
    assert psutil.pid_exists(pid)
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
    assert boxui(vm_home, "daemon", "stop").returncode == 0
