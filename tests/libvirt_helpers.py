"""A private libvirt host for tests: libvirtd and virtlogd as root in a mount namespace of
their own (`tests/libvirt_ns.py`), and an sshd in the same namespace so that
`qemu+ssh://` reaches the same daemon through SSH, as it would on another machine.

Written beside the `hosts` work's own sshd fixture, to be merged with it: this one must
run inside libvirtd's namespace (`nsenter`), where `virt-ssh-helper` finds the private
daemon at libvirt's usual socket path.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from backend.drivers.base import LaunchSpec
from backend.drivers.qemu.accel import detect_accel, host_tsc_khz
from backend.guest.image_builder import build_default_image
from backend.guest.machine_seed import (
    MachineKeys,
    client_private_key,
    create_machine_keys,
    known_hosts_line,
    write_machine_initrd,
)

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


def skip_unless_libvirt_can_run() -> None:
    """Skip (saying why) where a private root libvirtd cannot be started."""
    import os

    if os.geteuid() != 0:
        pytest.skip("a private libvirtd needs root")
    for tool in ("libvirtd", "virtlogd", "unshare", "nsenter", "virsh"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (bin/setup installs libvirt)")
    pytest.importorskip("libvirt")


@dataclass(frozen=True)
class LibvirtDaemon:
    root: Path
    pid: int  # the namespace's first process (tests/libvirt_ns.py)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"


def _wait_until_answering(daemon: LibvirtDaemon, proc: subprocess.Popen[bytes]) -> None:
    import libvirt

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            log = (daemon.root / "daemons.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"libvirtd exited ({proc.returncode}):\n{log}")
        if daemon.socket.exists():
            with contextlib.suppress(libvirt.libvirtError):
                libvirt.open(daemon.uri).close()
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"libvirtd did not answer within {START_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _destroy_all(uri: str) -> None:
    """Every running domain destroyed: a libvirtd that stops leaves its guests running."""
    import libvirt

    with contextlib.suppress(libvirt.libvirtError):
        conn = libvirt.open(uri)
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
        conn.close()


@contextlib.contextmanager
def running_libvirtd() -> Iterator[LibvirtDaemon]:
    skip_unless_libvirt_can_run()
    # short: libvirtd's sockets under it must fit a unix socket path (108 bytes)
    root = Path(tempfile.mkdtemp(prefix="lv-", dir="/tmp"))
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--",
         sys.executable, "-m", "tests.libvirt_ns", str(root)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # fmt: skip
    daemon = LibvirtDaemon(root, proc.pid)
    try:
        _wait_until_answering(daemon, proc)
        yield daemon
    finally:
        _destroy_all(daemon.uri)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            import os
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def libvirtd_stopped(daemon: LibvirtDaemon) -> Iterator[None]:
    """libvirtd stopped for the block (virtlogd and the guests run on), then started again
    and answering: `tests/libvirt_ns.py`'s SIGUSR1 and SIGUSR2. Started again whatever the
    block raised, so the daemon's teardown can still destroy the guests."""
    import os
    import signal

    pid_file = daemon.root / "libvirtd.pid"
    old = pid_file.read_text().strip() if pid_file.exists() else None
    os.kill(daemon.pid, signal.SIGUSR1)
    try:
        yield
    finally:
        os.kill(daemon.pid, signal.SIGUSR2)
        _wait_restarted(daemon, old)


def _wait_restarted(daemon: LibvirtDaemon, old_pid: str | None) -> None:
    import libvirt

    pid_file = daemon.root / "libvirtd.pid"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if pid_file.exists() and pid_file.read_text().strip() not in ("", old_pid):
            with contextlib.suppress(libvirt.libvirtError):
                libvirt.open(daemon.uri).close()
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"libvirtd did not come back within {START_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class SshInto:
    port: int
    key: Path
    wrapper: Path

    def uri(self) -> str:
        """`qemu+ssh://` to the namespace's libvirtd, with this test's key and known_hosts
        (the wrapper pins them, so nothing of the user's ~/.ssh is read or written)."""
        return (f"qemu+ssh://root@127.0.0.1:{self.port}/system"
                f"?keyfile={self.key}&command={self.wrapper}&no_tty=1")


def _ssh_files(root: Path, port: int) -> tuple[Path, Path, Path]:
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile {root / 'sshd.pid'}\n")
    # libvirt runs `command` as its ssh: this one keeps the test's known_hosts
    wrapper = root / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec ssh -o UserKnownHostsFile={root / 'known_hosts'} -o BatchMode=yes "
        '-o StrictHostKeyChecking=yes "$@"\n')
    wrapper.chmod(0o755)
    return config, root / "client_key", wrapper


@contextlib.contextmanager
def sshd_into(daemon: LibvirtDaemon) -> Iterator[SshInto]:
    """An sshd on a random 127.0.0.1 port inside the daemon's mount namespace."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("sshd is not installed (openssh-server)")
    root = Path(tempfile.mkdtemp(prefix="lvssh-", dir="/tmp"))
    port = _free_port()
    config, key, wrapper = _ssh_files(root, port)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    proc = subprocess.Popen(
        ["nsenter", f"--mount=/proc/{daemon.pid}/ns/mnt", "--",
         "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL, stderr=(root / "sshd.log").open("wb"))  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("sshd did not start: "
                                     + (root / "sshd.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield SshInto(port, key, wrapper)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class LibvirtGuest:
    """A boxui default guest's launch on a libvirt host, and the key that logs into it."""

    spec: LaunchSpec
    keys: MachineKeys


async def default_guest_launch(machine_dir: Path, name: str,
                               image_cache: Path) -> LibvirtGuest:
    """What boxui's own machine would boot: the default image, this machine's keys and
    seed, TCG or KVM as `boxui info` would pick, SSH forwarded to a free local port."""
    image = await build_default_image(image_cache)
    machine_dir.mkdir(parents=True, exist_ok=True)
    keys = create_machine_keys(machine_dir)
    initrd = write_machine_initrd(image, machine_dir, keys)
    accel = detect_accel().accel
    spec = LaunchSpec(
        name=name, vcpus=1, memory_mib=256, kernel=image.kernel, initrd=initrd, append="",
        accel=accel, ssh_port=_free_port(), boot_id=uuid.uuid4().hex[:16],
        machine_dir=machine_dir, run_dir=machine_dir, console_log=machine_dir / "console.log",
        tsc_khz=host_tsc_khz() if accel == "tcg" else None)  # fmt: skip
    return LibvirtGuest(spec, keys)


async def guest_exec(guest: LibvirtGuest, command: str, timeout: float = 60) -> str:
    """Run one command in the guest over SSH with its own key; its stdout."""
    async with asyncio.timeout(timeout), asyncssh.connect(
            "127.0.0.1", guest.spec.ssh_port, username="root",
            known_hosts=asyncssh.import_known_hosts(
                known_hosts_line(guest.keys, guest.spec.ssh_port)),
            client_keys=[client_private_key(guest.keys)]) as conn:
        result = await conn.run(command, check=True)
    return str(result.stdout)
