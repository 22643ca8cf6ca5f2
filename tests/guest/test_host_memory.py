"""QEMU under TCG runs without transparent huge pages; under KVM it keeps them."""

from __future__ import annotations

import subprocess

from backend.drivers.qemu.host_memory import preexec_for
from backend.state.accelerator import Accel


def thp_enabled_of_child(accel: Accel) -> str:
    status = subprocess.run(["cat", "/proc/self/status"], check=True, capture_output=True,
                            text=True, timeout=10,
                            preexec_fn=preexec_for(accel))
    (line,) = [line for line in status.stdout.splitlines() if line.startswith("THP_enabled:")]
    return line.split()[1]


def test_tcg_child_has_thp_disabled_and_kvm_child_not() -> None:
    assert thp_enabled_of_child("tcg") == "0"
    assert thp_enabled_of_child("kvm") == "1"
    assert preexec_for("kvm") is None
