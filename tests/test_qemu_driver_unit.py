"""QEMU driver behaviour that needs no guest: sockets, identity, missing binary."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backend.drivers import process_identity
from backend.drivers.base import StopTimeouts, VmHandle
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


#: a process that answers QMP on the socket it is given, as QEMU would, until killed
_QMP_SERVER = """
import json, socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen()
print("ready", flush=True)
conn, _ = server.accept()
greeting = {"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 0},
                                "package": ""}, "capabilities": []}}
conn.sendall(json.dumps(greeting).encode() + b"\\r\\n")
decoder, pending = json.JSONDecoder(), ""
while chunk := conn.recv(65536):  # commands come as bare JSON, not lines
    pending += chunk.decode()
    while pending.strip():
        asked, end = decoder.raw_decode(pending.lstrip())
        pending = pending.lstrip()[end:]
        reply = {"return": {}, **({"id": asked["id"]} if "id" in asked else {})}
        conn.sendall(json.dumps(reply).encode() + b"\\r\\n")
"""


async def test_a_killed_qemus_qmp_failure_is_retrieved(tmp_path: Path) -> None:
    """Killing QEMU ends its QMP connection with EOFError in qemu.qmp's reader; unless
    the driver disconnects, nobody retrieves it and asyncio prints "_GatheringFuture
    exception was never retrieved" when the client is collected (seen after vm tests)."""
    socket_path = tmp_path / "qmp.sock"
    proc = subprocess.Popen([sys.executable, "-c", _QMP_SERVER, str(socket_path)],
                            stdout=subprocess.PIPE)
    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context["message"]))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        started = start_time_of(proc.pid)
        assert started is not None
        handle = VmHandle(name="vm", pid=proc.pid, start_time=started, ssh_port=0,
                          boot_id="b", accel="tcg", console_log=tmp_path / "console.log",
                          qmp_socket=socket_path)
        driver = QemuDriver()
        await driver._hold(handle, PidWatch(proc.pid))
        assert driver._live[proc.pid].qmp is not None, "connected, as to a QEMU"
        await asyncio.wait_for(driver.kill(handle), 10)
        await asyncio.sleep(0.3)  # the client's reader meets the closed socket
        del driver
        gc.collect()
        await asyncio.sleep(0)
        assert not unretrieved
    finally:
        loop.set_exception_handler(None)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
