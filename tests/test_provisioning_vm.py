"""Provisioning a real default (busybox) guest through the CLI and a real daemon: the
scripts run as root over SSH after the first ready, once, also across a daemon restart
that re-adopts the guest; `provision` re-runs them; a failing one leaves the machine
failed and powered off. One boot for the whole module (`vm`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import IMAGE_CACHE
from tests.debian_image import IMAGE_NAME, build_image
from tests.vm_helpers import VM_MARKS, boxui, info, qemu_pids, start_daemon, stop_daemon

pytestmark = VM_MARKS


def marker(home: Path) -> str:
    out = boxui(home, "exec", "vm", "--", "cat", "/root/provisioned", timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_provision_scripts_on_a_real_guest(vm_home: Path, tmp_path: Path) -> None:
    home = vm_home
    first = tmp_path / "first.sh"
    first.write_text("echo \"uid $(id -u)\" >> /root/provisioned\necho hello from first\n")
    second = tmp_path / "second.sh"
    second.write_text("test -e /tmp/fail && { echo 'E: it broke' >&2; exit 7; }\n"
                      "echo second >> /root/provisioned\n")
    daemon = start_daemon(home)
    try:
        created = boxui(home, "create", "vm", "--memory", "256", "--provision", str(first),
                        "--provision", str(second))
        assert created.returncode == 0, created.stderr
        assert "vm: ready" in created.stdout
        first.write_text("echo edited >> /root/provisioned\n")  # the copy runs, not this
        assert marker(home) == "uid 0\nsecond\n"
        logs = boxui(home, "logs", "vm", "--provision")
        assert logs.returncode == 0 and "hello from first" in logs.stdout
        events = boxui(home, "events", "vm", "--json")
        kinds = [json.loads(line)["type"].rsplit(".", 1)[1] for line in
                 events.stdout.splitlines() if "provision.v1" in line]
        assert kinds.count("provisioned") == 2 and kinds[0] == "provisioning"

        # a new daemon re-adopts the running guest and runs nothing again
        stop_daemon(daemon)
        daemon = start_daemon(home)
        assert info(home, "vm")["state"] == "ready"
        again = boxui(home, "provision", "vm")
        assert again.returncode == 0, again.stderr
        assert marker(home) == "uid 0\nsecond\n" * 2

        assert boxui(home, "exec", "vm", "--", "touch", "/tmp/fail").returncode == 0
        failed = boxui(home, "provision", "vm")
        assert failed.returncode == 1 and failed.stderr.startswith("boxui: ")
        assert "exited 7" in failed.stderr and "E: it broke" in failed.stderr
        shown = info(home, "vm")
        assert shown["state"] == "failed" and "E: it broke" in shown["reason"]
        assert qemu_pids(home) == []  # powered off, not left half-supervised
        assert boxui(home, "rm", "vm").returncode == 0
    finally:
        stop_daemon(daemon)


@pytest.mark.skipif(shutil.which("mmdebstrap") is None or shutil.which("qemu-img") is None,
                    reason="needs mmdebstrap and qemu-img (bin/setup installs them)")
def test_provision_a_debian_disk_machine_once(vm_home: Path, tmp_path: Path) -> None:
    """On a machine with a disk, a second run would show: what the script wrote survives
    stop and start, and is there once."""
    build_image(IMAGE_CACHE)  # built once per host, shared with test_disk_vm
    setup = tmp_path / "setup.sh"
    setup.write_text("set -e\n. /etc/os-release\necho \"$ID $(id -un)\" >> /root/provisioned\n"
                     "sync\n")
    created = boxui(vm_home, "create", "deb", "--image", IMAGE_NAME, "--disk", "2G",
                    "--provision", str(setup))
    assert created.returncode == 0, created.stderr
    assert boxui(vm_home, "stop", "deb").returncode == 0
    assert boxui(vm_home, "start", "deb").returncode == 0
    out = boxui(vm_home, "exec", "deb", "--", "cat", "/root/provisioned")
    assert out.returncode == 0 and out.stdout == "debian root\n", out.stderr
    assert boxui(vm_home, "rm", "--force", "deb").returncode == 0
