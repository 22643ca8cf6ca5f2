"""`boxui cp` against real guests under TCG: a Debian machine's OpenSSH `sftp-server`
takes a file and a directory in and gives them back with their modes, and the default
guest (busybox and dropbear, no sftp-server) is refused in one line that says why."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import IMAGE_CACHE
from tests.debian_image import IMAGE_NAME, build_image
from tests.vm_helpers import VM_MARKS, boxui

pytestmark = VM_MARKS


def _modes(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {str(p.relative_to(root)): (p.stat().st_mode & 0o7777,
                                       p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.skipif(shutil.which("mmdebstrap") is None or shutil.which("qemu-img") is None,
                    reason="needs mmdebstrap and qemu-img (bin/setup installs them)")
def test_files_go_in_and_out_of_a_debian_guest(vm_home: Path, tmp_path: Path) -> None:
    build_image(IMAGE_CACHE)
    created = boxui(vm_home, "create", "deb1", "--image", IMAGE_NAME, "--disk", "2G")
    assert created.returncode == 0, created.stderr
    src = tmp_path / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "build.sh").write_bytes(b"#!/bin/sh\necho built\n")
    (src / "build.sh").chmod(0o750)
    (src / "sub" / "blob").write_bytes(os.urandom(2 * 1024 * 1024))
    (src / "sub" / "blob").chmod(0o604)

    put = boxui(vm_home, "cp", "-r", str(src), "deb1:/root/")
    assert put.returncode == 0, put.stderr
    ran = boxui(vm_home, "exec", "deb1", "--", "/root/proj/build.sh")
    assert ran.returncode == 0 and ran.stdout == "built\n", ran.stderr
    mode = boxui(vm_home, "exec", "deb1", "--", "stat", "-c", "%a", "/root/proj/sub/blob")
    assert mode.stdout == "604\n"

    back = tmp_path / "back"
    got = boxui(vm_home, "cp", "-r", "deb1:/root/proj", str(back))
    assert got.returncode == 0, got.stderr
    assert _modes(back) == _modes(src)
    missing = boxui(vm_home, "cp", "deb1:/root/nothing", str(tmp_path))
    assert missing.returncode == 1
    assert missing.stderr == "boxui: deb1:/root/nothing: no such file or directory\n"
    assert boxui(vm_home, "rm", "--force", "deb1").returncode == 0


def test_the_default_guest_is_refused_with_the_reason(vm_home: Path, tmp_path: Path) -> None:
    created = boxui(vm_home, "create", "tiny")
    assert created.returncode == 0, created.stderr
    (tmp_path / "f").write_text("f\n")
    refused = boxui(vm_home, "cp", str(tmp_path / "f"), "tiny:/root/f")
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "the default guest (busybox and dropbear) has none" in refused.stderr
    assert boxui(vm_home, "rm", "--force", "tiny").returncode == 0
