"""Real QEMU: build a snapshot template, restore clones from it, reach them over SSH.

Shares the guest image cache with the other VM tests ($BOXUI_GUEST_CACHE); one template
build (one cold boot) serves every assertion here.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.vm_helpers import VM_MARKS, boxui

pytestmark = VM_MARKS
#: a template build boots a guest cold and saves its memory
BUILD_TIMEOUT = 400
TEMPLATE = """schema_version = 1
template_id = "snap"
[[variants]]
role = "worker"
vcpus = 1
memory_mib = 128
"""


def as_json(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    shown: dict[str, Any] = json.loads(out.stdout)
    return shown


def test_snapshot_restore_reaches_ready_and_exec_answers(vm_home: Path, tmp_path: Path) -> None:
    source = tmp_path / "snap.toml"
    source.write_text(TEMPLATE)
    built = as_json(boxui(vm_home, "template", "build", str(source), "--snapshot", "--json",
                          timeout=BUILD_TIMEOUT))
    assert built["kind"] == "snapshot" and built["cache_hit"] is False
    again = as_json(boxui(vm_home, "template", "build", "snap", "--snapshot", "--json",
                          timeout=BUILD_TIMEOUT))
    assert again["cache_hit"] is True and again["revision"] == built["revision"]

    revision = json.loads((vm_home / "templates/snap/current/revision.json").read_text())
    variant = revision["variants"]["worker"]
    ram_file = vm_home / "templates/snap/current/worker" / variant["ram_file"]
    assert ram_file.stat().st_mode & 0o777 == 0o600
    assert variant["snapshot"]["vmstate_size_bytes"] < 1 << 20, "RAM is not in the state file"
    ram_before = hashlib.sha256(ram_file.read_bytes()).hexdigest()

    clones = {}
    for name in ("c1", "c2"):
        created = as_json(boxui(vm_home, "create", name, "--template", "snap:worker", "--json"))
        assert created["state"] == "ready"
        clones[name] = created["record"]
    ports = {r["ssh_port"] for r in clones.values()}
    assert len(ports) == 2, "each clone gets its own SSH port"
    for name in clones:  # each clone is called by its own name, not the template's
        answer = boxui(vm_home, "exec", name, "--", "sh", "-c",
                       "echo $((6 * 7)); hostname; cat /etc/hostname; "
                       "grep -c snap-worker /etc/hosts")
        assert answer.stdout.split() == ["42", name, name, "0"], answer.stderr
    draws = {boxui(vm_home, "exec", n, "--", "sh", "-c",
                   "head -c 16 /dev/urandom | od -An -tx1").stdout for n in clones}
    assert len(draws) == 2, "re-seeded clones must not draw the same random bytes"

    # clones map the template's RAM copy-on-write: what they write stays theirs
    for name in clones:
        wrote = boxui(vm_home, "exec", name, "--", "sh", "-c",
                      "head -c 8388608 /dev/urandom > /tmp/fill && echo ok")
        assert wrote.stdout.split() == ["ok"], wrote.stderr
    assert hashlib.sha256(ram_file.read_bytes()).hexdigest() == ram_before

    info = as_json(boxui(vm_home, "info", "c1", "--json"))
    assert info["record"]["rng_reseeded"] is True
    assert info["record"]["clock_set"] is True
    assert info["record"]["hostname_set"] is True
    assert info["record"]["restored_from"] == f"snap:worker@{built['revision']}"
    assert "shares its SSH host key" in str(info["shared_state"])
    assert "shared state:" in boxui(vm_home, "info", "c1").stdout
    events = boxui(vm_home, "events", "c1").stdout
    assert "restoring snapshot snap:worker@" in events
    assert "guest RNG re-seeded, clock set, hostname set to c1" in events

    refused = boxui(vm_home, "create", "c3", "--template", "snap:worker", "--vcpus", "2")
    assert refused.returncode == 1 and "vcpus 2 requested, snapshot has 1" in refused.stderr

    assert as_json(boxui(vm_home, "stop", "c1", "--json"))["state"] == "stopped"
    # restored long enough after the save that a clock left at the snapshot's time shows
    saved_at = datetime.fromisoformat(variant["snapshot"]["created_at"]).timestamp()
    time.sleep(max(0.0, saved_at + 5 - time.time()))
    assert as_json(boxui(vm_home, "start", "c1", "--json"))["state"] == "ready"
    guest_now = boxui(vm_home, "exec", "c1", "--", "date", "+%s")
    assert guest_now.returncode == 0, guest_now.stderr
    assert abs(int(guest_now.stdout) - time.time()) < 3, "the restored guest's clock is off"
    for name in clones:
        assert boxui(vm_home, "rm", "--force", name).returncode == 0
    assert boxui(vm_home, "template", "rm", "snap").returncode == 0
