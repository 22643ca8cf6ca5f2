"""Real QEMU through a real `boxui daemon`: `template build --snapshot` runs in the
daemon, and Ctrl-C in the CLI mid-build kills the build VM and publishes nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BOXUI, cli_env
from tests.line_reader import LineReader
from tests.vm_helpers import VM_MARKS, boxui, qemu_pids, start_daemon

pytestmark = VM_MARKS
BUILD_TIMEOUT = 400
TEMPLATE = """template_id = "snap"
[[variants]]
role = "worker"
memory_mib = 128
"""


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_snapshot_build_in_the_daemon_and_ctrl_c_cancels_it(vm_home: Path,
                                                             tmp_path: Path) -> None:
    source = tmp_path / "snap.toml"
    source.write_text(TEMPLATE)
    boxui(vm_home, "ls")  # the state dir exists before the daemon takes it
    daemon = start_daemon(vm_home)
    try:
        cli = subprocess.Popen([*BOXUI, "template", "build", str(source), "--snapshot"],
                               env=cli_env(vm_home), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        assert cli.stderr is not None
        progress = LineReader(cli.stderr)
        assert progress.until("building snap-worker", 120), "".join(progress.seen)
        wait_for(lambda: qemu_pids(vm_home), 60, "the build VM")
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130
        wait_for(lambda: not qemu_pids(vm_home), 30, "the build VM to be killed")
        artifacts = vm_home / "templates/snap/artifacts"
        wait_for(lambda: not any(artifacts.iterdir()), 10, "the staging dir to go")
        assert not (vm_home / "templates/snap/current").exists()

        built = boxui(vm_home, "template", "build", str(source), "--snapshot", "--json",
                      timeout=BUILD_TIMEOUT)
        assert built.returncode == 0, built.stderr
        result = json.loads(built.stdout)
        assert (result["kind"], result["cache_hit"], result["notes"]) == (
            "snapshot", False, [])
        assert "template: building snap-worker (role worker, snapshot)" in built.stderr
        assert qemu_pids(vm_home) == []  # the build VM is gone once it has been saved
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
