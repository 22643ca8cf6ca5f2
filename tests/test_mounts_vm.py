"""Shared folders in real guests under TCG, driven through the CLI: a host file is read in
the guest, a file the guest writes appears on the host as the host user's with the mode
the guest gave it, `:ro` refuses writes, and the mounts come back after a stop and start
and are still there in a machine a new daemon re-adopted. Both guests: the default
busybox one and a Debian one on its own disk."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IMAGE_CACHE, stop_background_daemons
from tests.debian_image import IMAGE_NAME, build_image
from tests.vm_helpers import VM_MARKS, boxui, info, start_daemon

pytestmark = VM_MARKS


def stop_daemon(daemon: subprocess.Popen[str]) -> None:
    daemon.terminate()
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(10)


def _shares(tmp_path: Path) -> tuple[Path, Path]:
    # not under /tmp: a guest path is the host path by default, and a Debian guest's
    # systemd-tmpfiles owns /tmp
    rw, ro = Path(f"/var/tmp/bx-share-{tmp_path.name[-12:]}"), tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "in.txt").write_text("from the host\n")
    (ro / "r.txt").write_text("read only\n")
    return rw, ro


def _check_shares(home: Path, name: str, rw: Path, ro: Path) -> None:
    # dd, not cat: busybox cat's sendfile from a 9p file into a pipe now and then dies
    # of SIGPIPE in the default guest (see README, Shared folders)
    read = boxui(home, "exec", name, "--", "sh", "-c",
                 f"dd if={rw}/in.txt 2>/dev/null && dd if=/ro/r.txt 2>/dev/null")
    assert read.returncode == 0 and read.stdout == "from the host\nread only\n", read.stderr
    wrote = boxui(home, "exec", name, "--", "sh", "-c",
                  f"echo from the guest > {rw}/out.txt && chmod 751 {rw}/out.txt")
    assert wrote.returncode == 0, wrote.stderr
    out = rw / "out.txt"
    assert out.read_text() == "from the guest\n"
    assert out.stat().st_uid == os.getuid()  # the host user's, whoever the guest was
    assert out.stat().st_mode & 0o777 == 0o751  # the mode the guest set (not 0600)
    refused = boxui(home, "exec", name, "--", "sh", "-c", "echo x > /ro/w.txt")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert not (ro / "w.txt").exists()
    out.unlink()


def _run(home: Path, name: str, rw: Path, ro: Path, *create_args: str) -> None:
    created = boxui(home, "create", name, "--mount", str(rw), "--mount", f"{ro}:/ro:ro",
                    *create_args)
    assert created.returncode == 0, created.stderr
    assert info(home, name)["spec"]["mounts"] == [
        {"host": str(rw), "guest": str(rw), "readonly": False},
        {"host": str(ro), "guest": "/ro", "readonly": True}]
    _check_shares(home, name, rw, ro)
    assert boxui(home, "stop", name).returncode == 0
    assert boxui(home, "start", name).returncode == 0
    _check_shares(home, name, rw, ro)
    stop_background_daemons(home)  # the VM keeps running; a new daemon re-adopts it
    daemon = start_daemon(home)
    try:
        assert info(home, name)["state"] == "ready"
        _check_shares(home, name, rw, ro)
        assert boxui(home, "rm", "--force", name).returncode == 0
    finally:
        stop_daemon(daemon)
    assert (rw / "in.txt").is_file()  # the host's folder is never the machine's to delete


def test_shared_folders_in_the_default_guest(vm_home: Path, tmp_path: Path) -> None:
    rw, ro = _shares(tmp_path)
    try:
        _run(vm_home, "share1", rw, ro)
    finally:
        shutil.rmtree(rw, ignore_errors=True)


@pytest.mark.skipif(shutil.which("mmdebstrap") is None or shutil.which("qemu-img") is None,
                    reason="needs mmdebstrap and qemu-img (bin/setup installs them)")
def test_shared_folders_in_a_debian_guest(vm_home: Path, tmp_path: Path) -> None:
    build_image(IMAGE_CACHE)
    rw, ro = _shares(tmp_path)
    try:
        _run(vm_home, "share2", rw, ro, "--image", IMAGE_NAME, "--disk", "2G")
    finally:
        shutil.rmtree(rw, ignore_errors=True)


def test_a_missing_host_dir_is_refused_before_boot(vm_home: Path, tmp_path: Path) -> None:
    refused = boxui(vm_home, "create", "share3", "--mount", str(tmp_path / "gone"))
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines()[-1] == (  # after "started boxui daemon, pid N"
        f"boxui: share3: mount {tmp_path / 'gone'}: no such directory on this host")
    assert not (vm_home / "machines" / "share3").exists()
