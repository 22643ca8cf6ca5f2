"""Driving real QEMU guests through the CLI and a real `boxui daemon`, for the `vm` tests.

The `vm_home` fixture that goes with these lives in `tests/conftest.py`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import BOXUI, cli_env
from tests.line_reader import LineReader

#: a module's `pytestmark` when its tests boot real guests
VM_MARKS = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed"),
]


def boxui(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                         env=cli_env(home), timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def info(home: Path, name: str) -> dict[str, Any]:
    """`boxui info --json`: parsed JSON, so its values are whatever the JSON holds."""
    shown: dict[str, Any] = json.loads(boxui(home, "info", name, "--json").stdout)
    return shown


def start_daemon(home: Path, timeout: float = 30) -> subprocess.Popen[str]:
    """A `boxui daemon`, returned once it says it supervises (after crash recovery)."""
    proc = subprocess.Popen([*BOXUI, "daemon"], env=cli_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = LineReader(proc.stdout)
    if lines.until("supervising", timeout):
        return proc
    proc.kill()
    proc.wait(10)
    raise AssertionError("daemon did not start: " + "".join(lines.seen))


def stop_daemon(daemon: subprocess.Popen[str]) -> None:
    """SIGTERM, as systemd sends it: a daemon that does not exit on it fails the test
    (and is killed, so that nothing outlives the test)."""
    daemon.terminate()
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        pytest.fail("the daemon did not exit on SIGTERM")


def qemu_pids(home: Path) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] and p.info["name"].startswith(("qemu", "boxui-"))
            and any(str(home) in a for a in p.info["cmdline"] or [])]
