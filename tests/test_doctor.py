"""`boxui doctor`: each host check's pass and fail line (with fake probes), and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from backend.drivers.qemu.accel import AccelChoice
from backend.supervision import host_checks
from backend.supervision.host_checks import (
    MIN_FREE_BYTES,
    Check,
    HostProbes,
    check_accel,
    check_disk,
    check_key_files,
    check_qemu,
    check_ssh,
    check_state_dir,
    check_tool,
    host_is_fit,
    run_checks,
)
from boxui.cli.main import cli
from tests.conftest import BOXUI, cli_env

QEMU_LINE = "QEMU emulator version 9.9.9"
KVM = AccelChoice(accel="kvm", reason="/dev/kvm usable and CPU has vmx")
TCG = AccelChoice(accel="tcg", reason="no vmx/svm in /proc/cpuinfo; using TCG")


def fake(missing: tuple[str, ...] = (), *, accel: AccelChoice = KVM,
         free: int = 10 * MIN_FREE_BYTES,
         version: Callable[[list[str]], str] = lambda argv: QEMU_LINE) -> HostProbes:
    return HostProbes(
        which=lambda program: None if program in missing else f"/usr/bin/{program}",
        first_output_line=version, accel=lambda: accel, free_bytes=lambda path: free,
        euid=os.geteuid)


def assert_fails_with_fix(check: Check, *words: str) -> None:
    line = check.line()
    assert check.status == "fail" and line.startswith("FAIL"), line
    assert "fix:" in line and all(word in line for word in words), line


def test_qemu_version_or_the_package_to_install() -> None:
    ok = check_qemu(fake())
    assert ok.status == "ok" and QEMU_LINE in ok.line() and "fix" not in ok.line()
    assert_fails_with_fix(check_qemu(fake(("qemu-system-x86_64",))),
                          "qemu-system-x86_64 not found", "apt-get install qemu-system-x86")

    def broken(argv: list[str]) -> str:
        raise subprocess.CalledProcessError(1, argv)

    assert_fails_with_fix(check_qemu(fake(version=broken)), "does not run", "--reinstall")


def test_accel_kvm_passes_tcg_warns_with_its_reason() -> None:
    assert check_accel(fake()).line().startswith("ok    accel       KVM: /dev/kvm usable")
    tcg = check_accel(fake(accel=TCG))
    assert tcg.status == "warn" and "TCG: no vmx/svm" in tcg.line()
    assert "fix:" in tcg.line() and "/dev/kvm" in tcg.line()
    assert host_is_fit([tcg])


def test_image_tools_are_needed_mmdebstrap_is_optional() -> None:
    assert check_tool(fake(), "dpkg-deb").line() == "ok    dpkg-deb    /usr/bin/dpkg-deb"
    assert_fails_with_fix(check_tool(fake(("cpio",)), "cpio"), "apt-get install cpio")
    assert_fails_with_fix(check_tool(fake(("dpkg-deb",)), "dpkg-deb"), "apt-get install dpkg")
    optional = check_tool(fake(("mmdebstrap",)), "mmdebstrap", optional=True)
    assert optional.status == "warn" and "optional" in optional.line()
    assert "fix: sudo apt-get install mmdebstrap" in optional.line()
    assert host_is_fit([optional])


def test_ssh_client() -> None:
    assert check_ssh(fake()).status == "ok"
    assert_fails_with_fix(check_ssh(fake(("ssh",))), "apt-get install openssh-client")


def test_disk_space_is_measured_where_the_state_dir_will_be(tmp_path: Path) -> None:
    seen: list[Path] = []

    def free(path: Path) -> int:
        seen.append(path)
        return MIN_FREE_BYTES * 3

    probes = HostProbes(which=lambda p: None, free_bytes=free)
    assert check_disk(probes, tmp_path / "not" / "yet").line() == \
        f"ok    disk        3.0 GiB free under {tmp_path}"
    assert seen == [tmp_path]
    assert_fails_with_fix(check_disk(fake(free=MIN_FREE_BYTES - 1), tmp_path),
                          "only 1.0 GiB free", "BOXUI_HOME")


def test_state_dir_modes_and_owner(tmp_path: Path) -> None:
    root = tmp_path / "home"
    assert "not created yet" in check_state_dir(fake(), root).line()
    root.mkdir(mode=0o700)
    (root / "run").mkdir(mode=0o700)
    assert check_state_dir(fake(), root).line().startswith("ok    state dir")
    root.chmod(0o755)
    loose = check_state_dir(fake(), root)
    assert loose.status == "warn" and f"fix: chmod 700 {root}" in loose.line()
    root.chmod(0o700)
    (root / "run").chmod(0o777)
    assert_fails_with_fix(check_state_dir(fake(), root), "writable by others",
                          f"chmod 700 {root / 'run'}")
    (root / "run").chmod(0o700)
    someone_else = HostProbes(which=lambda p: None, euid=lambda: os.geteuid() + 1)
    assert_fails_with_fix(check_state_dir(someone_else, root), "owned by uid", "chown")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert_fails_with_fix(check_state_dir(fake(), a_file), "not a directory")
    assert_fails_with_fix(check_state_dir(fake(), a_file / "sub"), "cannot be created")


def test_private_keys_must_be_0600(tmp_path: Path) -> None:
    assert check_key_files(tmp_path / "none").line() == \
        "ok    key files   no private keys yet"
    machine = tmp_path / "machines" / "alpha"
    machine.mkdir(parents=True)
    key = machine / "id_ed25519"
    key.write_text("secret")
    key.chmod(0o600)
    (machine / "id_ed25519.pub").write_text("public")
    (machine / "id_ed25519.pub").chmod(0o644)
    assert check_key_files(tmp_path).line() == "ok    key files   1 private keys, all 0600"
    key.chmod(0o640)  # group-readable is enough for ssh to refuse it
    assert_fails_with_fix(check_key_files(tmp_path), str(key), f"chmod 600 {key}")


def test_run_checks_covers_every_check_and_fails_only_on_needed(tmp_path: Path) -> None:
    checks = run_checks(tmp_path / "home", fake(("mmdebstrap",), accel=TCG))
    assert [c.name for c in checks] == [
        "qemu", "accel", "apt-get", "apt-cache", "dpkg-deb", "cpio", "mmdebstrap", "ssh",
        "disk", "state dir", "key files", "orphans"]
    assert host_is_fit(checks)
    assert not host_is_fit(run_checks(tmp_path / "home", fake(("apt-get",))))


@pytest.mark.parametrize(("missing", "code"), [((), 0), (("cpio",), 1)])
def test_cli_prints_one_line_per_check_and_exits_by_fitness(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...],
        code: int) -> None:
    monkeypatch.setenv("BOXUI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(host_checks, "HostProbes", lambda: fake(missing, accel=TCG))
    out = CliRunner().invoke(cli, ["doctor"])
    assert out.exit_code == code, out.output
    lines = out.output.splitlines()
    assert len(lines) == 12 and lines[0] == f"ok    qemu        {QEMU_LINE} " \
        "(/usr/bin/qemu-system-x86_64)"
    assert lines[1].startswith("warn  accel       TCG: ")
    assert ("FAIL  cpio        not found" in out.output) == bool(missing)
    quiet = CliRunner().invoke(cli, ["doctor", "--quiet"])
    assert quiet.exit_code == code
    assert [line.split()[1] for line in quiet.output.splitlines()] == \
        ["accel", *(["cpio"] if missing else [])]
    data = json.loads(CliRunner().invoke(cli, ["doctor", "--json"]).output)
    assert data["ok"] is (code == 0) and len(data["checks"]) == 12
    cpio = next(c for c in data["checks"] if c["name"] == "cpio")
    assert cpio["fix"] == ("sudo apt-get install cpio" if missing else None)


def test_doctor_runs_on_this_host(tmp_path: Path) -> None:
    """The real probes: the exit code agrees with the JSON verdict, nothing is created."""
    home = tmp_path / "home"
    out = subprocess.run([*BOXUI, "doctor", "--json"], capture_output=True, text=True,
                         env=cli_env(home), timeout=60)
    data = json.loads(out.stdout)
    assert out.returncode == (0 if data["ok"] else 1), out.stderr
    assert not home.exists()
