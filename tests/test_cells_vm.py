"""`boxui run` with a real guest under TCG: the default guest (no sftp-server) takes its
input and gives its export through exec, the command's output and exit code are the
CLI's, and afterwards no machine and no QEMU process is left; a daemon SIGKILLed during
the command leaves none either, once the next daemon has started."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import BOXUI, cli_env
from tests.vm_helpers import VM_MARKS, boxui, qemu_pids, start_daemon

pytestmark = VM_MARKS


def _gone(home: Path, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while qemu_pids(home):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_run_uname_in_a_fresh_guest(vm_home: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"from the host\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ran = boxui(vm_home, "run", "--name", "c1", "--env", "GREETING=hi",
                f"--input={tmp_path / 'in.txt'}:/root/work/in.txt",
                f"--export=/root/work/res.txt:{out_dir}", "--",
                "sh", "-c", 'uname -n; (cat /root/work/in.txt; echo "$GREETING") '
                "> /root/work/res.txt; exit 5")
    assert (ran.returncode, ran.stdout) == (5, "c1\n"), ran.stderr
    expected = b"from the host\nhi\n"
    assert (out_dir / "res.txt").read_bytes() == expected
    [cell] = json.loads(boxui(vm_home, "cells", "--json").stdout)
    assert (cell["outcome"], cell["exit_code"], cell["stage"]) == ("failed", 5, "destroyed")
    assert cell["artifacts"][0]["sha256"] == hashlib.sha256(expected).hexdigest()
    assert json.loads(boxui(vm_home, "ls", "--json").stdout) == []
    assert _gone(vm_home)
    assert boxui(vm_home, "run", "--", "uname", "-n").stdout.startswith("cell-")
    assert json.loads(boxui(vm_home, "ls", "--json").stdout) == []
    assert _gone(vm_home)
    boxui(vm_home, "daemon", "stop")


def test_a_daemon_killed_during_the_command_leaks_no_guest(vm_home: Path) -> None:
    daemon = start_daemon(vm_home)
    run = subprocess.Popen([*BOXUI, "run", "--name", "c2", "--", "sh", "-c",
                            "echo started; sleep 600"], env=cli_env(vm_home), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout is not None
    first = run.stdout.readline()
    assert first == "started\n", (first, run.communicate(timeout=60))
    assert len(qemu_pids(vm_home)) == 1
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(30)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1 and "broke off the cell" in err, err
    daemon = start_daemon(vm_home, timeout=120)  # recovery: re-adopt, then destroy
    try:
        assert json.loads(boxui(vm_home, "ls", "--json").stdout) == []
        assert _gone(vm_home)
        [cell] = json.loads(boxui(vm_home, "cells", "--json").stdout)
        assert cell["outcome"] == "interrupted" and "its command" in cell["reason"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
