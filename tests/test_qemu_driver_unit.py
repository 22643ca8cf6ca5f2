"""QEMU driver behaviour that needs no guest: sockets, identity, missing binary."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backend.drivers import process_identity
from backend.drivers.base import StopTimeouts
from backend.drivers.errors import DriverError
from backend.drivers.process_identity import PidWatch, cmdline_of, verify_identity
from backend.drivers.qemu import qmp_ops
from backend.drivers.qemu.driver import (
    QemuDriver,
    _prepare_ram_file,
    _remove_stale_socket,
    identity_args,
)
from backend.drivers.qemu.qmp_ops import QMP_TIMEOUT
from backend.drivers.stop_escalation import escalate
from backend.state.process_liveness import start_time_of


def test_stale_socket_removed_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    try:
        with pytest.raises(DriverError, match="a live QEMU still holds"):
            _remove_stale_socket(path)
        assert path.exists()
    finally:
        server.close()
    # the listener is gone; the file left behind is stale
    assert path.exists()
    _remove_stale_socket(path)
    assert not path.exists()


def test_identity_needs_cmdline_and_start_time(tmp_path: Path) -> None:
    args = identity_args("vm", tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *args])
    try:
        deadline = time.monotonic() + 5  # until the child has exec'd, its cmdline is ours
        while args[0] not in (cmdline_of(proc.pid) or []) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = start_time_of(proc.pid)
        assert started is not None
        assert verify_identity(proc.pid, started, args) is None
        other = identity_args("other", tmp_path)
        assert "pid reused" in (verify_identity(proc.pid, started, other) or "")
        assert "pid reused" in (verify_identity(proc.pid, started - 5, args) or "")
    finally:
        proc.kill()
        proc.wait()
    assert verify_identity(proc.pid, started, args) == "process gone while boxui was down"


def test_a_qemu_dying_between_the_checks_is_gone_not_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed just after its start time was read: by the command line's read it is a
    zombie (under load the exit and the reap lag the kill), so it has none."""
    args = identity_args("vm", tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *args])
    try:
        deadline = time.monotonic() + 5
        while args[0] not in (cmdline_of(proc.pid) or []) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = start_time_of(proc.pid)
        assert started is not None
        proc.kill()
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline + 5, "the child never became a zombie"
            time.sleep(0.01)
        monkeypatch.setattr(process_identity, "start_time_of", lambda _pid: started)
        assert verify_identity(proc.pid, started, args) == "process gone while boxui was down"
    finally:
        proc.kill()
        proc.wait()


def test_missing_qemu_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DriverError) as info:
        _ = QemuDriver().binary
    text = str(info.value)
    assert "qemu-system-x86_64" in text and "apt-get install qemu-system-x86" in text
    assert "\n" not in text


def test_a_build_ram_file_starts_empty_and_private(tmp_path: Path) -> None:
    ram = tmp_path / "ram.bin"
    ram.write_bytes(b"left by a failed attempt")
    ram.chmod(0o644)
    _prepare_ram_file(ram, True, 64 << 20)
    assert ram.stat().st_size == 0 and ram.stat().st_mode & 0o777 == 0o600


def test_a_restore_ram_file_must_be_whole(tmp_path: Path) -> None:
    """QEMU would size an empty file itself: that write would land in the template."""
    ram = tmp_path / "ram.bin"
    with pytest.raises(DriverError, match="cannot read snapshot memory"):
        _prepare_ram_file(ram, False, 64 << 20)
    ram.write_bytes(b"")
    with pytest.raises(DriverError, match="is 0 bytes, not the 67108864"):
        _prepare_ram_file(ram, False, 64 << 20)
    assert ram.stat().st_size == 0  # refused, not repaired
    with ram.open("r+b") as f:
        f.truncate(64 << 20)
    _prepare_ram_file(ram, False, 64 << 20)
    assert ram.stat().st_size == 64 << 20


class _HungQmp:
    """A QMP client whose QEMU never answers (deadlocked, SIGSTOPped)."""

    async def execute(self, command: str, arguments: object = None) -> object:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_every_qmp_command_has_a_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await qmp_ops.execute(_HungQmp(), "query-status", timeout=0.2)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(QMP_TIMEOUT + 2):  # fails the test if it never returns
            await qmp_ops.request_powerdown(_HungQmp())  # type: ignore[arg-type]
    assert time.monotonic() - started < QMP_TIMEOUT + 2


async def test_escalation_ends_a_process_that_ignores_everything_but_sigkill() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, "
                             "flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"1\n"
        watch = PidWatch(proc.pid)
        hung = _HungQmp()
        ending = await escalate(watch, StopTimeouts(acpi=0.2, quit=0.2, term=0.3, kill=5),
                                powerdown=lambda: hung.execute("system_powerdown"),
                                quit=lambda: hung.execute("quit"))
        watch.close()
        assert ending.describe(True) == "killed (SIGKILL) after SIGTERM timeout (0.3 s)"
        assert ending.describe(False) == "process exited (not by boxui)"
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
