"""Real QEMU: a warm pool member claimed by `create --template` and by `run --template`
answers exec as its new name, survives a daemon killed outright, and nothing is left
once the pool is emptied."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.templates.test_snapshot_restore_vm import BUILD_TIMEOUT, as_json
from tests.vm_helpers import VM_MARKS, boxui, info, qemu_pids

pytestmark = VM_MARKS
TEMPLATE = """schema_version = 1
template_id = "warm"
[[variants]]
role = "worker"
memory_mib = 128
pool = 1
"""


def wait_for(home: Path, ready: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pools = as_json(boxui(home, "pool", "ls", "--json"))["pools"]
        if pools and pools[0]["ready"] == ready and pools[0]["warming"] == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the pool did not reach {ready} ready: {pools}")


def test_a_claimed_member_answers_as_its_new_name(vm_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "warm.toml"
    source.write_text(TEMPLATE)
    as_json(boxui(vm_home, "template", "build", str(source), "--snapshot", "--json",
                  timeout=BUILD_TIMEOUT))  # the daemon it starts fills the pool (pool = 1)
    wait_for(vm_home, 1)
    assert json.loads(boxui(vm_home, "ls", "--json").stdout) == [], "members are not machines"

    created = as_json(boxui(vm_home, "create", "c1", "--template", "warm:worker", "--json"))
    assert created["state"] == "ready" and created["record"]["launched_as"], created
    answer = boxui(vm_home, "exec", "c1", "--", "sh", "-c", "hostname; cat /etc/hostname")
    assert answer.stdout.split() == ["c1", "c1"], answer.stderr
    record = info(vm_home, "c1")["record"]
    assert record["rng_reseeded"] and record["clock_set"] and record["hostname_set"]

    wait_for(vm_home, 1)  # refilled
    ran = boxui(vm_home, "run", "--template", "warm:worker", "--name", "r1", "--", "hostname")
    assert (ran.returncode, ran.stdout.strip()) == (0, "r1"), ran.stderr

    # the daemon killed outright: the next one re-adopts c1 by its launch identity
    status = as_json(boxui(vm_home, "daemon", "status", "--json"))
    os.kill(status["pid"], signal.SIGKILL)
    again = boxui(vm_home, "exec", "c1", "--", "hostname")  # starts a new daemon
    assert again.stdout.strip() == "c1", again.stderr
    events = [json.loads(line) for line in
              boxui(vm_home, "events", "c1", "--json").stdout.splitlines()]
    assert any("re-adopted" in (e["data"].get("message") or "") for e in events)

    assert boxui(vm_home, "rm", "--force", "c1").returncode == 0
    assert boxui(vm_home, "pool", "set", "warm:worker", "0").returncode == 0
    deadline = time.monotonic() + 60
    while qemu_pids(vm_home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_pids(vm_home) == [], "no QEMU left once the pool is empty"
    # and the daemon has let go of them all: a pool's churn must not pile up pidfds
    daemon = as_json(boxui(vm_home, "daemon", "status", "--json"))["pid"]
    while pidfds(daemon) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pidfds(daemon) == []


def pidfds(pid: int) -> list[str]:
    """The pidfds process `pid` holds, each as the pid it refers to (-1: exited and
    reaped), from /proc/PID/fdinfo."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:[pidfd]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines()
        except FileNotFoundError:
            continue  # closed meanwhile
        found += [line.split()[1] for line in info if line.startswith("Pid:")]
    return found
