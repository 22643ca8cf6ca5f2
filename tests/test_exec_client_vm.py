"""The native `boxui exec` client against a real guest and a real daemon: what it prints
and exits with is what the Python path prints and exits with (boots a guest: `vm`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.test_exec_client import SOURCE
from tests.vm_helpers import VM_MARKS, boxui, start_daemon, stop_daemon

pytestmark = VM_MARKS

COMMANDS = [
    ["uname", "-n"],
    ["sh", "-c", "echo out; echo err >&2; exit 3"],
    ["sh", "-c", "kill -TERM $$"],  # a signal: 128 + 15
    ["printf", "%s|", "two words", "", "$HOME", "it's"],  # words arrive as given
    ["seq", "1", "50000"],
]


@pytest.fixture
def native(tmp_path: Path) -> Path:
    """The client, with a boxui-py beside it that fails: nothing may be handed over."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    client = tmp_path / "boxui"
    subprocess.run(["cc", "-O2", "-o", str(client), str(SOURCE)], check=True, timeout=120)
    shim = tmp_path / "boxui-py"
    shim.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('handed over: ' + str(sys.argv))\n")
    shim.chmod(0o755)
    return client


def test_native_exec_is_the_python_paths(vm_home: Path, native: Path) -> None:
    daemon = start_daemon(vm_home)
    try:
        created = boxui(vm_home, "create", "vm", "--memory", "256")
        assert created.returncode == 0, created.stderr
        for command in COMMANDS:
            ran = subprocess.run([str(native), "exec", "vm", "--", *command],
                                 capture_output=True, env=cli_env(vm_home), timeout=120)
            python = subprocess.run([sys.executable, "-m", "boxui", "exec", "vm", "--",
                                     *command], capture_output=True, env=cli_env(vm_home),
                                    timeout=120)
            assert (ran.returncode, ran.stdout, ran.stderr) == \
                (python.returncode, python.stdout, python.stderr), command
        assert ran.stdout.count(b"\n") == 50000
        assert boxui(vm_home, "stop", "--force", "vm").returncode == 0
        stopped = subprocess.run([str(native), "exec", "vm", "true"], capture_output=True,
                                 text=True, env=cli_env(vm_home), timeout=60)
        assert (stopped.returncode, stopped.stderr) == (
            1, "boxui: vm is stopped, not running; start it with: boxui start vm\n")
    finally:
        stop_daemon(daemon)
    assert not (vm_home / "run" / "exec.sock").exists()


def test_native_run_in_a_fresh_guest(vm_home: Path, native: Path) -> None:
    """`boxui run` served by the client: the guest's output and exit code, nothing handed
    over (the shim would fail), and no machine left."""
    daemon = start_daemon(vm_home)
    try:
        ran = subprocess.run([str(native), "run", "--name", "c1", "--", "sh", "-c",
                              "uname -n; echo err >&2; exit 3"], capture_output=True,
                             env=cli_env(vm_home), timeout=600)
        assert (ran.returncode, ran.stdout, ran.stderr) == (3, b"c1\n", b"err\n"), ran.stderr
        assert boxui(vm_home, "ls", "--json").stdout.strip() == "[]"
    finally:
        stop_daemon(daemon)
