"""A command's deadline on a real guest: the whole command (a pipeline in the background
and a child in the foreground) is killed in the guest, not just its channel, and the
registry says `expired` with the reason (boots a guest: `vm`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.vm_helpers import VM_MARKS, boxui, start_daemon, stop_daemon

pytestmark = VM_MARKS


def _sleepers(home: Path) -> list[str]:
    out = boxui(home, "exec", "vm", "--", "ps", timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if "sleep 30" in line]


def test_a_deadline_kills_the_command_in_the_guest(vm_home: Path) -> None:
    home = vm_home
    daemon = start_daemon(home)
    try:
        created = boxui(home, "create", "vm", "--memory", "256")
        assert created.returncode == 0, created.stderr
        began = time.monotonic()
        out = boxui(home, "exec", "--timeout", "3", "vm", "--", "sh", "-c",
                    "sleep 300 | cat & sleep 301; echo never", timeout=60)
        took = time.monotonic() - began
        assert out.returncode == 1 and out.stdout == "", (out.stdout, out.stderr)
        assert "timed out after 3s" in out.stderr, out.stderr
        assert "killed in the guest (" in out.stderr, out.stderr
        assert took < 20, took
        assert _sleepers(home) == []  # nothing of it lives on in the guest
        [record] = [c for c in json.loads(boxui(home, "commands", "vm", "--json").stdout)
                    if "sleep 301" in c["command"]]
        assert record["state"] == "expired" and record["exit_code"] is None
        assert record["error"].startswith("deadline of 3 s passed; killed in the guest (")
        killed = int(record["error"].rsplit("killed in the guest (", 1)[1].split()[0])
        assert killed >= 3  # the shell, both sleeps and cat: at least three were alive
        # the machine is ready (not busy) and the connection still serves commands
        again = boxui(home, "exec", "vm", "--", "echo", "ok")
        assert (again.returncode, again.stdout) == (0, "ok\n"), again.stderr
        assert boxui(home, "stop", "--force", "vm").returncode == 0
    finally:
        stop_daemon(daemon)
