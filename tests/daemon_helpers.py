"""A fake-driver `boxui daemon` in a subprocess, and clean-up of its stand-in guests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.conftest import BOXUI, REPO, cli_env


def boxui(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                         env=cli_env(home), timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


class Daemon:
    def __init__(self, home: Path) -> None:
        env = cli_env(home) | {"PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_daemon"], env=env,
                                     text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=REPO)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(30):
            self.proc.kill()
            raise AssertionError("daemon did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "supervising" in line:
                self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@contextmanager
def daemon_running(home: Path) -> Iterator[Daemon]:
    daemon = Daemon(home)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.terminate()


def kill_stand_ins(home: Path) -> None:
    """Stand-in guests outlive the daemon (as VMs do); the test must end them."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(home) in arg for arg in cmdline) and proc.pid != os.getpid():
            proc.kill()


def machines(home: Path) -> dict[str, dict[str, object]]:
    out = boxui(home, "ls", "--json")
    return {m["name"]: m for m in json.loads(out.stdout)}


def recorded_pid(home: Path, name: str) -> int:
    """The hypervisor pid in the machine's runtime record, as `boxui ls --json` shows it."""
    record = machines(home)[name]["record"]
    assert isinstance(record, dict) and isinstance(record.get("pid"), int), record
    return int(record["pid"])
