"""The daemon's kept SSH connection to a real guest: reused between `boxui exec`s, and
reopened transparently after the guest's sshd is restarted (boots a guest: `vm`)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from backend.state.machine_store import MachineStore
from backend.state.state_dir import open_state_dir
from tests.vm_helpers import VM_MARKS, boxui, start_daemon, stop_daemon

pytestmark = VM_MARKS


def session_pid(home: Path) -> str:
    """The pid of the guest's dropbear process serving our SSH connection: the parent of
    the command's shell, the same for every command on one connection."""
    out = boxui(home, "exec", "vm", "--", "sh", "-c", "echo $PPID", timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_for_banner(port: int, timeout: float = 60) -> None:
    """Until the guest's (respawned) sshd greets on the forwarded port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(2)
            try:
                sock.connect(("127.0.0.1", port))
                if sock.recv(64).startswith(b"SSH-"):
                    return
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"no SSH banner on port {port} within {timeout:g}s")


def test_exec_reuses_the_connection_and_survives_an_sshd_restart(vm_home: Path) -> None:
    home = vm_home
    daemon = start_daemon(home)
    try:
        created = boxui(home, "create", "vm", "--memory", "256")
        assert created.returncode == 0, created.stderr
        first = session_pid(home)
        assert session_pid(home) == first  # one connection, a channel per command
        # every dropbear in the guest dies (ours too); init respawns the listener
        kill = boxui(home, "exec", "vm", "--", "sh", "-c",
                     "setsid sh -c 'sleep 0.5; killall dropbear' >/dev/null 2>&1 &")
        assert kill.returncode == 0, kill.stderr
        time.sleep(1.5)
        port = MachineStore(open_state_dir(home)).load_record("vm").ssh_port
        assert port is not None
        wait_for_banner(port)
        after = boxui(home, "exec", "vm", "--", "sh", "-c", "echo $PPID")
        assert after.returncode == 0, after.stderr  # first try, no error shown
        assert after.stdout.strip() != first
        assert boxui(home, "stop", "--force", "vm").returncode == 0
    finally:
        stop_daemon(daemon)
