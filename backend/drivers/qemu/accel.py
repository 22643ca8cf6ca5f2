"""Choosing KVM or TCG.

On the project's machines `/dev/kvm` exists and even `KVM_CREATE_VM` works, yet guests
never run under it (no `vmx`/`svm`: nested virtualisation is off). So "is /dev/kvm
there" is not enough: KVM is chosen only when the device opens read-write *and* the CPU
advertises hardware virtualisation; otherwise TCG, with a reason the UI can show.

TCG needs one more fact from the host: its TSC frequency. Under TCG the guest's TSC
*is* the host's TSC, but `-M microvm` has no HPET or ACPI PM timer, so the guest kernel
can only calibrate the TSC against the emulated PIT. When the host is busy that
calibration fails ("Unable to calibrate against PIT ... Marking TSC unstable") and the
boot hangs for good at the delay-loop calibration: measured 1 hang in 3 boots with one
busy core, 3 in 3 with two. Passing `tsc_early_khz=<host kHz>` (plus `tsc=reliable`,
since the TSC is the stable clock here and jiffies the jittery one) made 3 of 3 boot
under the same load.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from backend.state.accelerator import Accel, AccelRequest

DEFAULT_KVM_PATH = Path("/dev/kvm")
DEFAULT_CPUINFO_PATH = Path("/proc/cpuinfo")
#: exposed by some kernels; more exact than cpuinfo's "cpu MHz" when present
DEFAULT_TSC_SYSFS_PATH = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
_VIRT_FLAGS = frozenset({"vmx", "svm"})


class AccelChoice(BaseModel):
    """The accelerator to pass to `-accel`, and why, in words a user understands."""

    model_config = ConfigDict(frozen=True)

    accel: Accel
    reason: str
    #: host TSC frequency for the guest kernel (TCG only; see module docstring)
    tsc_khz: int | None = None


def host_tsc_khz(
    cpuinfo_path: Path = DEFAULT_CPUINFO_PATH, sysfs_path: Path = DEFAULT_TSC_SYSFS_PATH
) -> int | None:
    """The host TSC frequency in kHz, or None if it cannot be told.

    cpuinfo's "cpu MHz" is the kernel's TSC calibration on hosts without frequency
    scaling, which is exactly the VMs that have no nested KVM and so need TCG.
    """
    try:
        return int(sysfs_path.read_text().strip())
    except (OSError, ValueError):
        pass
    try:
        text = cpuinfo_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "cpu MHz":
            try:
                khz = round(float(value) * 1000)
            except ValueError:
                return None
            return khz if khz > 0 else None
    return None


def _cpu_virt_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    found: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            found |= _VIRT_FLAGS.intersection(value.split())
    return found


def _kvm_openable(kvm: Path) -> str | None:
    """Return None if `kvm` opens read-write, else why not."""
    try:
        fd = os.open(kvm, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{kvm} does not exist"
    except PermissionError:
        return f"no read-write access to {kvm}"
    except OSError as exc:
        return f"cannot open {kvm}: {exc.strerror or exc}"
    os.close(fd)
    return None


def _tcg(reason: str, cpuinfo_path: Path) -> AccelChoice:
    return AccelChoice(accel="tcg", reason=reason, tsc_khz=host_tsc_khz(cpuinfo_path))


def detect_accel(
    kvm_path: Path = DEFAULT_KVM_PATH, cpuinfo_path: Path = DEFAULT_CPUINFO_PATH
) -> AccelChoice:
    """Pick KVM when it can really run guests here, otherwise TCG with the reason."""
    problem = _kvm_openable(kvm_path)
    if problem is not None:
        return _tcg(f"{problem}; using TCG (software emulation)", cpuinfo_path)
    flags = _cpu_virt_flags(cpuinfo_path)
    if not flags:
        return _tcg(f"no vmx/svm in {cpuinfo_path}; using TCG (software emulation)", cpuinfo_path)
    shown = "/".join(sorted(flags))
    return AccelChoice(accel="kvm", reason=f"{kvm_path} usable and CPU has {shown}")


def resolve_accel(
    requested: AccelRequest,
    kvm_path: Path = DEFAULT_KVM_PATH,
    cpuinfo_path: Path = DEFAULT_CPUINFO_PATH,
) -> AccelChoice:
    """Honour a user's forced choice; "auto" detects.

    A forced "kvm" is not second-guessed (the user may know better than cpuinfo, e.g. a
    hypervisor hiding the flag), but the reason says when detection disagrees so a
    hang at boot can be explained.
    """
    if requested == "tcg":
        return _tcg("TCG forced by user (software emulation)", cpuinfo_path)
    detected = detect_accel(kvm_path, cpuinfo_path)
    if requested == "auto":
        return detected
    if detected.accel == "kvm":
        return AccelChoice(accel="kvm", reason="KVM forced by user")
    return AccelChoice(
        accel="kvm", reason=f"KVM forced by user although detection said: {detected.reason}"
    )
