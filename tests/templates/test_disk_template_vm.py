"""Real QEMU: a snapshot template of a Debian image, restored into clones on their own
overlays of the disk frozen with its memory.

What the template's guest wrote to its disk before the snapshot (the initramfs writes
the build VM's boot id to /etc/boxui/boot-id) is there in the clone; what a clone writes
stays in its own overlay: the frozen disk does not change and a sibling clone does not
see it; a restart of a clone boots its own disk, with its writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IMAGE_CACHE
from tests.debian_image import IMAGE_NAME, build_image
from tests.vm_helpers import VM_MARKS, boxui

pytestmark = [*VM_MARKS, pytest.mark.slow, pytest.mark.skipif(
    shutil.which("mmdebstrap") is None or shutil.which("qemu-img") is None,
    reason="needs mmdebstrap and qemu-img (bin/setup installs them)")]
#: the build boots Debian cold under TCG (minutes on a loaded host) and saves it
BUILD_TIMEOUT = 900
TEMPLATE = f"""template_id = "deb"
image = "{IMAGE_NAME}"
[[variants]]
role = "host"
vcpus = 1
memory_mib = 512
"""


def as_json(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    shown: dict[str, Any] = json.loads(out.stdout)
    return shown


def run(home: Path, name: str, script: str) -> str:
    """`boxui exec`, tried again when the SSH handshake itself timed out (10 s): a
    restored OpenSSH guest under TCG on a loaded host can take longer than that."""
    for _ in range(5):
        out = boxui(home, "exec", name, "--", "sh", "-c", script)
        if "timed out after" not in out.stderr:
            break
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_debian_template_clones_share_the_frozen_disk_and_keep_their_writes(
        vm_home: Path, tmp_path: Path) -> None:
    build_image(IMAGE_CACHE)
    source = tmp_path / "deb.toml"
    source.write_text(TEMPLATE)
    built = as_json(boxui(vm_home, "template", "build", str(source), "--snapshot", "--json",
                          timeout=BUILD_TIMEOUT))
    assert built["kind"] == "snapshot"
    role_dir = vm_home / "templates/deb/current/host"
    variant = json.loads((role_dir.parent / "revision.json").read_text())["variants"]["host"]
    assert variant["os_image"] == IMAGE_NAME and variant["disk_file"] == "disk.qcow2"
    frozen = role_dir / "disk.qcow2"
    assert frozen.stat().st_mode & 0o777 == 0o444
    frozen_before = hashlib.sha256(frozen.read_bytes()).hexdigest()

    c1 = as_json(boxui(vm_home, "create", "c1", "--template", "deb:host", "--json"))
    assert c1["state"] == "ready" and c1["record"]["restored_from"].startswith("deb:host@")
    # written by the template's own boot, before its snapshot: on the frozen disk
    assert run(vm_home, "c1", "cat /etc/boxui/boot-id").strip() == \
        variant["snapshot"]["boot_id"]
    assert run(vm_home, "c1", "hostname").strip() == "c1"
    assert run(vm_home, "c1", "echo mine > /root/c1-file && sync && echo ok").strip() == "ok"

    c2 = as_json(boxui(vm_home, "create", "c2", "--template", "deb:host", "--json"))
    assert c2["state"] == "ready"
    assert run(vm_home, "c2", "cat /root/c1-file 2>/dev/null || echo absent").strip() == \
        "absent"
    assert hashlib.sha256(frozen.read_bytes()).hexdigest() == frozen_before

    # a clone's disk is an overlay on the frozen one, in its own directory
    overlay = subprocess.run(["qemu-img", "info", "-U", "--output=json",  # QEMU holds it
                              str(vm_home / "machines/c1/disk.qcow2")],
                             capture_output=True, text=True, check=True)
    assert json.loads(overlay.stdout)["backing-filename"] == str(frozen.resolve())

    # restarted, c1 boots its own disk (not the snapshot again): its write is there
    assert boxui(vm_home, "stop", "c1").returncode == 0
    restarted = boxui(vm_home, "start", "c1", timeout=900)
    assert restarted.returncode == 0, restarted.stderr
    assert run(vm_home, "c1", "cat /root/c1-file").strip() == "mine"
    for name in ("c1", "c2"):
        assert boxui(vm_home, "rm", "--force", name).returncode == 0
    assert frozen.is_file()
