"""What this host needs to run boxui's guests, checked one fact at a time (`boxui doctor`).

Each check says what it found and, when that is a problem, the command that fixes it, so
a newcomer's first run ends with a list of things to do rather than a failure halfway
through an image build. A "fail" is something boxui cannot work without; a "warn" is a
degraded or optional thing (TCG instead of KVM, a missing optional tool) and does not
make the host unfit.

The probes (finding a program, running it, the accelerator detection, free space) are
passed in, so each check's pass and fail lines can be tested on any host.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backend.drivers.qemu.accel import AccelChoice, detect_accel
from backend.drivers.qemu.cmdline import QEMU_BINARY
from backend.errors import BoxuiError
from backend.guest.machine_seed import CLIENT_KEY_FILE, HOST_KEY_FILE
from backend.guest.tools import TOOL_PACKAGES
from backend.state.machine_store import MachineStore
from backend.state.state_dir import default_home, open_state_dir
from backend.supervision.orphans import PoolHolders, find_orphans, recorded_owner, scan

Status = Literal["ok", "warn", "fail"]

#: a guest image, its .deb cache and one snapshot of a 256 MiB machine fit in this
MIN_FREE_BYTES = 1 << 30
#: programs guest image builds run, all required (see backend.guest.apt / image_builder)
IMAGE_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "cpio")
PRIVATE_KEY_FILES = (CLIENT_KEY_FILE, HOST_KEY_FILE)
_VERSION_TIMEOUT_S = 10.0
_KVM_FIX = ("for KVM, turn on vmx/svm (nested virtualisation, in a VM) and give your user "
            "read-write /dev/kvm (sudo usermod -aG kvm $USER)")


@dataclass(frozen=True)
class Check:
    """One fact about the host: what was found, and how to fix it when it is a problem."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        label = {"ok": "ok", "warn": "warn", "fail": "FAIL"}[self.status]
        fix = f" -- fix: {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{label:<4}  {self.name:<10}  {self.detail}{fix}"

    def as_json(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix if self.status != "ok" else None}


def _which(program: str) -> str | None:
    return shutil.which(program)


def _first_output_line(argv: list[str]) -> str:
    """First line a program prints; raises OSError or SubprocessError when it cannot run."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_VERSION_TIMEOUT_S,
                          check=True)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


@dataclass(frozen=True)
class HostProbes:
    """How the checks look at the host; tests pass fakes."""

    which: Callable[[str], str | None] = _which
    first_output_line: Callable[[list[str]], str] = _first_output_line
    accel: Callable[[], AccelChoice] = detect_accel
    free_bytes: Callable[[Path], int] = _free_bytes
    euid: Callable[[], int] = os.geteuid


def check_qemu(probes: HostProbes) -> Check:
    path = probes.which(QEMU_BINARY)
    package = TOOL_PACKAGES[QEMU_BINARY]
    if path is None:
        return Check("qemu", "fail", f"{QEMU_BINARY} not found",
                     f"sudo apt-get install {package}")
    try:
        version = probes.first_output_line([path, "--version"])
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("qemu", "fail", f"{path} does not run: {exc}",
                     f"sudo apt-get install --reinstall {package}")
    return Check("qemu", "ok", f"{version or 'unknown version'} ({path})")


def check_accel(probes: HostProbes) -> Check:
    choice = probes.accel()
    if choice.accel == "kvm":
        return Check("accel", "ok", f"KVM: {choice.reason}")
    return Check("accel", "warn", f"TCG: {choice.reason}", _KVM_FIX)


def check_tool(probes: HostProbes, program: str, *, optional: bool = False) -> Check:
    package = TOOL_PACKAGES.get(program, program)
    path = probes.which(program)
    if path is not None:
        return Check(program, "ok", path)
    if optional:
        return Check(program, "warn", "optional, not found",
                     f"sudo apt-get install {package}")
    return Check(program, "fail", "not found (guest image builds need it)",
                 f"sudo apt-get install {package}")


def check_ssh(probes: HostProbes) -> Check:
    path = probes.which("ssh")
    if path is None:
        return Check("ssh", "fail", "no ssh client (`boxui ssh` runs it)",
                     "sudo apt-get install openssh-client")
    return Check("ssh", "ok", path)


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: where it will be created."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(probes: HostProbes, root: Path) -> Check:
    where = _existing(root)
    try:
        free = probes.free_bytes(where)
    except OSError as exc:
        return Check("disk", "fail", f"cannot tell free space under {where}: {exc}",
                     "set BOXUI_HOME to a directory you can use")
    shown = f"{free / (1 << 30):.1f} GiB free under {where}"
    if free < MIN_FREE_BYTES:
        return Check("disk", "fail", f"only {shown} (boxui needs 1 GiB)",
                     "free space on that filesystem, or set BOXUI_HOME to a roomier place")
    return Check("disk", "ok", shown)


def _dir_problem(path: Path, euid: int) -> Check | None:
    """A failing or warning check for one state directory, None when it is as boxui
    makes it (0700, owned by the user)."""
    try:
        info = path.lstat()
    except OSError as exc:
        return Check("state dir", "fail", f"cannot use {path}: {exc.strerror}",
                     "set BOXUI_HOME to a directory you can use")
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        return Check("state dir", "fail", f"{path} is not a directory",
                     "move it away, or set BOXUI_HOME to another place")
    if info.st_uid != euid:
        return Check("state dir", "fail", f"{path} is owned by uid {info.st_uid}, not you",
                     f"sudo chown -R {euid} {path}, or set BOXUI_HOME to your own place")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Check("state dir", "fail", f"{path} is writable by others (mode {mode:04o})",
                     f"chmod 700 {path}")
    if mode & 0o077:
        return Check("state dir", "warn", f"{path} is readable by others (mode {mode:04o})",
                     f"chmod 700 {path}")
    return None


def check_state_dir(probes: HostProbes, root: Path) -> Check:
    if not root.exists() and not root.is_symlink():
        where = _existing(root)
        if not where.is_dir():
            return Check("state dir", "fail", f"{root} cannot be created: {where} is not a "
                         "directory", "set BOXUI_HOME to another place")
        return Check("state dir", "ok", f"{root} not created yet (boxui makes it 0700)")
    euid = probes.euid()
    for path in (root, *(root / sub for sub in ("machines", "events", "run", "services"))):
        if path == root or path.exists():
            problem = _dir_problem(path, euid)
            if problem is not None:
                return problem
    return Check("state dir", "ok", f"{root}: mode 0700, owned by you (uid {euid})")


def _private_keys(root: Path) -> list[Path]:
    found: list[Path] = []
    for parent, _dirs, files in os.walk(root):
        found += [Path(parent) / name for name in files if name in PRIVATE_KEY_FILES]
    return sorted(found)


def _open_to_others(path: Path) -> bool:
    try:
        return bool(path.lstat().st_mode & 0o077)
    except FileNotFoundError:  # removed while we looked: nothing to fix
        return False


def check_key_files(root: Path) -> Check:
    """SSH refuses a private key others can read, so one is a failure, not a warning."""
    keys = _private_keys(root) if root.is_dir() else []
    bad = [key for key in keys if _open_to_others(key)]
    if not bad:
        return Check("key files", "ok", f"{len(keys)} private keys, all 0600"
                     if keys else "no private keys yet")
    shown = " ".join(str(k) for k in bad[:3]) + (f" (and {len(bad) - 3} more)"
                                                 if len(bad) > 3 else "")
    return Check("key files", "fail", f"{len(bad)} private keys others can read: {shown}",
                 f"chmod 600 {' '.join(str(k) for k in bad)}")


def check_orphans(root: Path) -> Check:
    """QEMU processes of this state dir that no machine's current run owns, nor a warm
    pool (by the machines' and members' records: doctor runs without a supervisor)."""
    if not root.is_dir():
        return Check("orphans", "ok", "no state dir yet")
    try:
        dirs = open_state_dir(root, create=False)
        store = MachineStore(dirs)
        orphans = find_orphans(scan(dirs), recorded_owner(store), PoolHolders.load(dirs, store))
    except (BoxuiError, OSError) as exc:
        return Check("orphans", "warn", f"cannot look for orphaned QEMU processes: {exc}")
    if not orphans:
        return Check("orphans", "ok", "no orphaned QEMU processes")
    shown = "; ".join(f"pid {o.process.pid} ({o.reason})" for o in orphans[:3])
    more = f" (and {len(orphans) - 3} more)" if len(orphans) > 3 else ""
    return Check("orphans", "warn", f"{len(orphans)} orphaned QEMU processes: {shown}{more}",
                 "boxui gc --dry-run, then boxui gc")


def run_checks(root: Path | None = None, probes: HostProbes | None = None) -> list[Check]:
    """Every check, in the order a newcomer should fix them."""
    probes = probes or HostProbes()
    root = (root or default_home()).expanduser().absolute()
    return [
        check_qemu(probes),
        check_accel(probes),
        *(check_tool(probes, tool) for tool in IMAGE_TOOLS),
        check_tool(probes, "mmdebstrap", optional=True),
        check_ssh(probes),
        check_disk(probes, root),
        check_state_dir(probes, root),
        check_key_files(root),
        check_orphans(root),
    ]


def host_is_fit(checks: list[Check]) -> bool:
    """True when nothing needed is missing (warnings do not count)."""
    return all(check.status != "fail" for check in checks)
