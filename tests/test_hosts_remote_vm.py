"""One real guest on a remote boxui reached through the test's sshd: created, exec'd into
and stopped from the local CLI with `--host` (boots a guest: `vm`). The remote daemon is
the real one, started on demand over SSH."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.sshd_helpers import sshd_running
from tests.test_hosts_remote import BOXUI_BIN, stop_keepers_of
from tests.vm_helpers import VM_MARKS

pytestmark = VM_MARKS


def test_exec_on_a_real_guest_through_a_remote_host(vm_home: Path, tmp_path: Path) -> None:
    with sshd_running(tmp_path / "sshd", vm_home) as sshd:
        try:
            env = sshd.client_env(tmp_path / "local")

            def run(*args: str) -> subprocess.CompletedProcess[str]:
                out = subprocess.run([str(BOXUI_BIN), *args], capture_output=True, text=True,
                                     env=env, timeout=600)
                assert "Traceback" not in out.stderr, out.stderr
                return out

            added = run("host", "add", "r1", sshd.address, "--identity", str(sshd.identity))
            assert added.returncode == 0, added.stderr
            created = run("create", "vm", "--memory", "256", "--host", "r1")
            assert created.returncode == 0, created.stderr
            hello = run("exec", "--host", "r1", "vm", "--", "sh", "-c", "uname -n; exit 4")
            assert (hello.returncode, hello.stdout) == (4, "vm\n"), hello.stderr
            stopped = run("stop", "--force", "vm", "--host", "r1")
            assert stopped.returncode == 0, stopped.stderr
            assert (vm_home / "machines" / "vm").is_dir()
            assert not (tmp_path / "local" / "machines" / "vm").exists()
        finally:
            stop_keepers_of(tmp_path / "local")
