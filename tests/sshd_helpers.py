"""A second "host" on this machine: a real sshd started by the test on a random
127.0.0.1 port, with a throw-away host key and an authorized key whose `environment=`
gives the login its own boxui state dir and this repo's `.venv/bin` on PATH.

The client side is a home of its own (`HOME`, so `~/.ssh/config` and `known_hosts` are
the test's): the host key is pinned there, as a user would have pinned it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO
from tests.daemon_helpers import kill_stand_ins

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
START_TIMEOUT = 10.0


@dataclass
class Sshd:
    port: int
    root: Path
    client_home: Path
    remote_home: Path
    identity: Path
    host_key: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"ssh://{os.environ.get('USER') or 'root'}@127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or start again) the sshd and wait until it accepts connections."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL,
                                     stderr=(self.root / "sshd.log").open("ab"))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sshd exited: " + (self.root / "sshd.log").read_text())
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def client_env(self, home: Path) -> dict[str, str]:
        """The environment of a CLI on the client side: its own state dir and HOME."""
        env = dict(os.environ, BOXUI_HOME=str(home), HOME=str(self.client_home))
        for name in ("SSH_AUTH_SOCK", "BOXUI_DEBUG", "BOXUI_HOST"):
            env.pop(name, None)
        return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, timeout=30)


def make_sshd(root: Path, remote_home: Path) -> Sshd:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    client_home = root / "client"
    (client_home / ".ssh").mkdir(mode=0o700, parents=True)
    host_key, identity = root / "host_key", client_home / ".ssh" / "id_test"
    _keygen(host_key)
    _keygen(identity)
    port = _free_port()
    path = f"{REPO / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env = f'environment="BOXUI_HOME={remote_home}",environment="PATH={path}"'
    public = (client_home / ".ssh" / "id_test.pub").read_text()
    (root / "authorized_keys").write_text(f"{env} {public}")
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PermitUserEnvironment yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "PermitRootLogin prohibit-password", f"PidFile {root / 'sshd.pid'}",
        "AllowStreamLocalForwarding yes", "Subsystem sftp internal-sftp", "LogLevel ERROR",
        ""]))
    pinned = f"[127.0.0.1]:{port} {(root / 'host_key.pub').read_text()}"
    (client_home / ".ssh" / "known_hosts").write_text(pinned)
    return Sshd(port, root, client_home, remote_home, identity, host_key)


@contextlib.contextmanager
def sshd_running(root: Path, remote_home: Path) -> Iterator[Sshd]:
    sshd = make_sshd(root, remote_home)
    sshd.start()
    try:
        yield sshd
    finally:
        sshd.stop()


@contextlib.contextmanager
def remote_boxui_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """An sshd whose logins run boxui in `tmp_path/remote`; the stand-in guests its
    daemon left there are killed afterwards (they outlive a daemon on purpose)."""
    remote = tmp_path / "remote"
    try:
        with sshd_running(tmp_path / "sshd", remote) as server:
            yield server
    finally:
        kill_stand_ins(remote)
