"""A supervisor SIGKILLed while commands run: the next one finds their leases run out,
dispatches the idempotent one again (attempt 2) and expires the other, never re-running
it. The real daemon over the stand-in driver, whose exec runs commands on the host."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from tests.daemon_helpers import Daemon, boxui, kill_stand_ins


def _commands(home: Path) -> dict[str, dict[str, Any]]:
    out = boxui(home, "commands", "--json")
    assert out.returncode == 0, out.stderr
    return {c["command"].split()[-1]: c for c in json.loads(out.stdout)}


def _until(what: str, condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_supervisor_s_commands_are_dispatched_again_or_expired(
        home: Path, tmp_path: Path) -> None:
    runs, once = tmp_path / "runs", tmp_path / "once"
    daemon = Daemon(home)
    clis: list[threading.Thread] = []
    try:
        assert boxui(home, "create", "vm").returncode == 0
        for args in (["--idempotent", "--attempts", "3", "vm", "--", "sh", "-c",
                      f"echo run >> {runs}; sleep 5", "idem"],
                     ["vm", "--", "sh", "-c", f"echo run >> {once}; sleep 5", "plain"]):
            cli = threading.Thread(target=boxui, args=(home, "exec", *args), daemon=True)
            cli.start()
            clis.append(cli)
        _until("both commands to start", lambda: runs.exists() and once.exists())
        before = _commands(home)
        assert {c["state"] for c in before.values()} == {"dispatched"}
        assert before["idem"]["lease_expires_at"] is not None
        daemon.kill()
        for cli in clis:
            cli.join(30)
        # no supervisor: the records still say dispatched, marked as orphaned
        listing = boxui(home, "commands").stdout
        assert "dispatched*" in listing and "its supervisor died" in listing

        daemon = Daemon(home)
        _until("the idempotent command to finish again",
               lambda: _commands(home)["idem"]["state"] == "succeeded")
        after = _commands(home)
        idem, plain = after["idem"], after["plain"]
        assert (idem["attempt"], idem["max_attempts"], idem["exit_code"]) == (2, 3, 0)
        assert runs.read_text() == "run\nrun\n"  # it ran again, as it may
        assert plain["state"] == "expired" and plain["attempt"] == 1
        assert f"pid {daemon_pid_of(before['plain'])} died while it ran" in plain["error"]
        assert "not idempotent, so never run again" in plain["error"]
        time.sleep(0.5)
        assert once.read_text() == "run\n"  # never re-run
        _until("the machine to be ready again",
               lambda: json.loads(boxui(home, "ls", "--json").stdout)[0]["state"] == "ready",
               timeout=5)
    finally:
        if daemon.proc.poll() is None:
            daemon.terminate()
        kill_stand_ins(home)


def daemon_pid_of(record: dict[str, Any]) -> int:
    pid = record["owner_pid"]
    assert isinstance(pid, int)
    return pid
