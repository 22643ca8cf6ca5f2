"""KVM is only chosen when it can really run guests; TCG says why and carries the TSC rate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.drivers.qemu.accel import detect_accel, host_tsc_khz, resolve_accel

CPUINFO_AMD_NO_SVM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu MHz\t\t: 2445.404
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov lm constant_tsc

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov lm constant_tsc
"""
CPUINFO_INTEL_VMX = CPUINFO_AMD_NO_SVM.replace("cmov lm", "cmov vmx lm")


@pytest.fixture
def kvm_rw(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    path.chmod(0o666)
    return path


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"cpuinfo-{abs(hash(text))}"
    path.write_text(text)
    return path


def test_kvm_device_without_virt_flags_falls_back_to_tcg(tmp_path: Path, kvm_rw: Path) -> None:
    choice = detect_accel(kvm_rw, cpuinfo(tmp_path, CPUINFO_AMD_NO_SVM))
    assert choice.accel == "tcg"
    assert "no vmx/svm" in choice.reason and "TCG" in choice.reason
    assert choice.tsc_khz == 2445404


def test_kvm_chosen_with_device_and_vmx(tmp_path: Path, kvm_rw: Path) -> None:
    choice = detect_accel(kvm_rw, cpuinfo(tmp_path, CPUINFO_INTEL_VMX))
    assert choice.accel == "kvm"
    assert "vmx" in choice.reason
    assert choice.tsc_khz is None


def test_svm_counts_like_vmx(tmp_path: Path, kvm_rw: Path) -> None:
    text = CPUINFO_AMD_NO_SVM.replace("cmov lm", "cmov svm lm")
    assert detect_accel(kvm_rw, cpuinfo(tmp_path, text)).accel == "kvm"


def test_flag_must_be_a_whole_word(tmp_path: Path, kvm_rw: Path) -> None:
    text = CPUINFO_AMD_NO_SVM.replace("cmov lm", "cmov vmxfoo svm_lock lm")
    assert detect_accel(kvm_rw, cpuinfo(tmp_path, text)).accel == "tcg"


def test_missing_kvm_device_falls_back_even_with_vmx(tmp_path: Path) -> None:
    choice = detect_accel(tmp_path / "nope", cpuinfo(tmp_path, CPUINFO_INTEL_VMX))
    assert choice.accel == "tcg"
    assert "does not exist" in choice.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file read-write")
def test_unwritable_kvm_device_falls_back(tmp_path: Path, kvm_rw: Path) -> None:
    kvm_rw.chmod(0o444)
    choice = detect_accel(kvm_rw, cpuinfo(tmp_path, CPUINFO_INTEL_VMX))
    assert choice.accel == "tcg"
    assert "read-write" in choice.reason


def test_kvm_path_that_cannot_be_opened_rw_falls_back(tmp_path: Path) -> None:
    # a directory cannot be opened O_RDWR, even by root
    choice = detect_accel(tmp_path, cpuinfo(tmp_path, CPUINFO_INTEL_VMX))
    assert choice.accel == "tcg"
    assert "cannot open" in choice.reason


def test_forcing_overrides_detection(tmp_path: Path, kvm_rw: Path) -> None:
    no_virt = cpuinfo(tmp_path, CPUINFO_AMD_NO_SVM)
    forced = resolve_accel("kvm", kvm_rw, no_virt)
    assert forced.accel == "kvm"
    assert "forced" in forced.reason and "no vmx/svm" in forced.reason
    assert resolve_accel("tcg", kvm_rw, cpuinfo(tmp_path, CPUINFO_INTEL_VMX)).accel == "tcg"
    assert resolve_accel("auto", kvm_rw, no_virt).accel == "tcg"


def test_host_tsc_prefers_sysfs_then_cpuinfo(tmp_path: Path) -> None:
    info = cpuinfo(tmp_path, CPUINFO_AMD_NO_SVM)
    sysfs = tmp_path / "tsc_freq_khz"
    assert host_tsc_khz(info, sysfs) == 2445404
    sysfs.write_text("2999999\n")
    assert host_tsc_khz(info, sysfs) == 2999999
    assert host_tsc_khz(tmp_path / "none", tmp_path / "none2") is None
