"""Port forwards and `ssh NAME.boxui` against a real guest under TCG: a forward added to
the running guest (no restart) reaches its sshd on a second host port and is gone once
removed; a host port in use is refused in one line; the installed ssh config reaches the
guest with its host key pinned, and follows it to a new port at its next boot."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BOXUI, cli_env
from tests.vm_helpers import VM_MARKS, boxui, info

pytestmark = [*VM_MARKS, pytest.mark.skipif(shutil.which("ssh") is None,
                                            reason="needs the ssh client")]


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.settimeout(20)
        return sock.recv(64)


def _ssh(user_home: Path, host: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(user_home / ".ssh" / "config"),
                           "-o", "BatchMode=yes", host, "echo", "hi"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(user_home)})


def test_forwards_and_ssh_config_on_a_running_guest(vm_home: Path, tmp_path: Path) -> None:
    created = boxui(vm_home, "create", "p1")
    assert created.returncode == 0, created.stderr
    pid = info(vm_home, "p1")["record"]["pid"]

    added = boxui(vm_home, "port", "add", "p1", "22", "--json")
    assert added.returncode == 0, added.stderr
    host = json.loads(added.stdout)[0]["live_host"]
    assert isinstance(host, int) and host != info(vm_home, "p1")["record"]["ssh_port"]
    assert _banner(host).startswith(b"SSH-2.0-")  # the guest's sshd, on a second port
    assert info(vm_home, "p1")["record"]["pid"] == pid  # no restart
    listed = boxui(vm_home, "port", "ls", "p1")
    assert listed.stdout == f"p1: 127.0.0.1:{host} -> guest 22/tcp\n"

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        refused = boxui(vm_home, "port", "add", "p1", f"{busy}:80")
        assert refused.returncode == 1 and refused.stderr == (
            f"boxui: host port 127.0.0.1:{busy}/tcp is in use by another program; p1's "
            "forwards are unchanged\n")

    user_home = tmp_path / "user"
    installed = subprocess.run([*BOXUI, "ssh-config", "--install"], capture_output=True,
                               text=True, timeout=60,
                               env=cli_env(vm_home) | {"HOME": str(user_home)})
    assert installed.returncode == 0, installed.stderr
    reached = _ssh(user_home, "p1.boxui")
    assert reached.returncode == 0 and reached.stdout == "hi\n", reached.stderr

    removed = boxui(vm_home, "port", "rm", "p1", "22")
    assert removed.returncode == 0, removed.stderr
    with pytest.raises(OSError):
        _banner(host)  # nothing forwards that port any more
    assert boxui(vm_home, "port", "ls", "p1").stdout.startswith("p1 forwards no ports")

    # a new boot, a new SSH port: the supervisor rewrote the entry
    assert boxui(vm_home, "restart", "p1").returncode == 0
    again = _ssh(user_home, "p1.boxui")
    assert again.returncode == 0 and again.stdout == "hi\n", again.stderr
    assert boxui(vm_home, "rm", "--force", "p1").returncode == 0
    gone = _ssh(user_home, "p1.boxui")
    assert gone.returncode == 255

