"""virtlogd and libvirtd as root, in a mount namespace of their own (run under `unshare -m`).

A root libvirtd takes its config, sockets and state from fixed system paths
(/etc/libvirt, /run/libvirt, /var/lib/libvirt, ...). Bind-mounting a test's directories
over those paths, in a namespace only this process tree sees, keeps the test's libvirtd
private: its socket is `ROOT/run/libvirt-sock` from outside, and nothing it writes
lands in the host's libvirt dirs. The mount points themselves (empty dirs) are made if
missing, as the libvirt packages would.

Usage: unshare -m --propagation private -- python -m tests.libvirt_ns ROOT
It exits when libvirtd does, and stops both daemons on SIGTERM. SIGUSR1 stops libvirtd
alone (as `systemctl stop libvirtd` would: virtlogd and the guests run on) and SIGUSR2
starts it again, so a test can take the daemon away and bring it back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

#: system path -> the directory under ROOT mounted over it
BIND_MOUNTS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
}

LIBVIRTD_CONF = """\
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
"""

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""

VIRTLOGD_CONF = 'log_outputs = "3:stderr"\n'


def prepare(root: Path) -> None:
    for target, name in BIND_MOUNTS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)
    (root / "etc/libvirtd.conf").write_text(LIBVIRTD_CONF)
    (root / "etc/qemu.conf").write_text(QEMU_CONF)
    (root / "etc/virtlogd.conf").write_text(VIRTLOGD_CONF)
    for target, name in BIND_MOUNTS.items():
        subprocess.run(["mount", "--bind", str(root / name), target], check=True)


class Libvirtd:
    """libvirtd, which SIGUSR1 stops and SIGUSR2 starts again; SIGTERM ends the run."""

    def __init__(self, root: Path, log: BinaryIO) -> None:
        self.root, self.log = root, log
        self.wanted, self.ending = True, False
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["libvirtd", "--config", "/etc/libvirt/libvirtd.conf",
                                 "--pid-file", str(self.root / "libvirtd.pid")],
                                stdout=self.log, stderr=self.log)

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGUSR2:
            self.wanted = True
            return
        self.ending = signum == signal.SIGTERM
        self.wanted = self.ending
        self.proc.terminate()

    def run(self) -> int:
        """Until libvirtd exits unasked, or SIGTERM."""
        while True:
            code = self.proc.wait()
            if self.wanted or self.ending:
                return code
            while not self.wanted:  # a test's helper, woken by a signal: a nap is fine
                time.sleep(0.05)
            if self.ending:
                return code
            self.proc = self._start()


def main(root: Path) -> int:
    prepare(root)
    log = (root / "daemons.log").open("ab")
    # pid files in ROOT too: their default, /run/*.pid, is the host's, not libvirt's dir
    virtlogd = subprocess.Popen(["virtlogd", "--config", "/etc/libvirt/virtlogd.conf",
                                 "--pid-file", str(root / "virtlogd.pid")],
                                stdout=log, stderr=log)
    libvirtd = Libvirtd(root, log)
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, libvirtd.on_signal)
    code = libvirtd.run()
    virtlogd.terminate()
    try:
        virtlogd.wait(timeout=10)
    except subprocess.TimeoutExpired:
        virtlogd.kill()
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
