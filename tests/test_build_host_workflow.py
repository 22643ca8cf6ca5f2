"""The build-host workflow of issue 15, end to end, as a user drives it through the CLI:
a `debian-12-build` machine (the shipped recipe, built by `boxui image build`) with a host
folder holding a C project mounted; `make` in the guest builds it and the binary appears
on the host and runs there; a provision script installs a package with apt-get from
Debian's mirror; what the machine wrote to its disk survives a stop and start; `rm` takes
the disk with it. Real QEMU under TCG (`vm`), one machine for the whole test.

The image lives in the shared guest cache (`vm_home` links its `images` there), so it is
built once per host: `image build` again is a cache hit while Debian's archive has not
moved (see README, Images).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm_helpers import VM_MARKS, boxui, info

pytestmark = [*VM_MARKS, pytest.mark.skipif(
    shutil.which("mmdebstrap") is None or shutil.which("qemu-img") is None,
    reason="needs mmdebstrap and qemu-img (bin/setup installs them)")]

IMAGE = "debian-12-build"
#: small, no dependencies beyond libc, not in the image: its presence shows apt-get ran
PACKAGE = "tree"
BUILD_TIMEOUT = 1800.0  # a full image build under TCG-loaded CI; a cache hit takes seconds
PROVISION_TIMEOUT = 900.0  # boot, apt-get update and install, all in the emulated CPU

MAKEFILE = "hello: hello.c\n\tcc -O2 -o $@ $<\n"
HELLO_C = '#include <stdio.h>\nint main(void) { puts("hello from build1"); return 0; }\n'
PROVISION = f"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends {PACKAGE}
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A C project in a host folder; under /var/tmp, since a guest path under /tmp
    would meet the Debian guest's tmpfiles."""
    src = Path(f"/var/tmp/bx-src-{tmp_path.name[-12:]}")
    src.mkdir()
    (src / "Makefile").write_text(MAKEFILE)
    (src / "hello.c").write_text(HELLO_C)
    yield src
    shutil.rmtree(src, ignore_errors=True)


def _exec(home: Path, *argv: str, timeout: float = 300) -> str:
    out = boxui(home, "exec", "build1", "--", *argv, timeout=timeout)
    assert out.returncode == 0, f"{argv}: exit {out.returncode}: {out.stderr}"
    return out.stdout


def test_build_host_workflow(vm_home: Path, tmp_path: Path, project: Path) -> None:
    started = time.monotonic()
    built = boxui(vm_home, "image", "build", IMAGE, timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, built.stderr
    print(f"image build {IMAGE}: {time.monotonic() - started:.0f} s")  # CI's cost, -s shows
    setup = tmp_path / "setup.sh"
    setup.write_text(PROVISION)

    started = time.monotonic()
    created = boxui(vm_home, "create", "build1", "--image", IMAGE, "--disk", "4G",
                    "--memory", "512", "--mount", f"{project}:/src",
                    "--provision", str(setup), timeout=PROVISION_TIMEOUT)
    assert created.returncode == 0, created.stderr
    print(f"create with provisioning: {time.monotonic() - started:.0f} s")
    disk = vm_home / "machines" / "build1" / "disk.qcow2"
    assert disk.is_file() and info(vm_home, "build1")["spec"]["image"] == IMAGE

    # users other than root can run programs and resolve names (apt fetches as _apt)
    _exec(vm_home, "su", "-s", "/bin/sh", "nobody", "-c", "getent hosts localhost")
    _exec(vm_home, "make", "-C", "/src", timeout=600)
    binary = project / "hello"
    assert binary.is_file()  # written by the guest's cc, through the mount
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0 and ran.stdout == "hello from build1\n"
    assert PACKAGE in _exec(vm_home, "dpkg-query", "-W", "-f=${Package}\\n", PACKAGE)

    _exec(vm_home, "sh", "-c", "echo kept > /root/kept && sync")
    assert boxui(vm_home, "stop", "build1").returncode == 0
    assert boxui(vm_home, "start", "build1").returncode == 0
    assert _exec(vm_home, "cat", "/root/kept") == "kept\n"
    _exec(vm_home, PACKAGE, "/src")  # the provisioned package is on the disk too

    assert boxui(vm_home, "stop", "build1").returncode == 0
    removed = boxui(vm_home, "rm", "build1")
    assert removed.returncode == 0, removed.stderr
    assert not disk.exists() and not disk.parent.exists()
    assert (project / "hello.c").is_file()  # the shared folder is the user's, kept
