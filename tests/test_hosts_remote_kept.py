"""Every command on a remote boxui behind a real sshd (started here), and the kept SSH
connection CLI calls share: reused, replaced when it died, gone when idle."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
from pathlib import Path

from tests.daemon_helpers import daemon_running
from tests.sshd_helpers import Sshd
from tests.test_hosts_remote import BOXUI_BIN, add, run
from tests.test_hosts_remote import sshd as sshd  # the fixture

#: what a keeper's exit is awaited for, at most
EXIT_TIMEOUT = 15.0


def there(sshd: Sshd, *args: str) -> subprocess.CompletedProcess[str]:
    """The remote's own boxui run on its state dir, as its login would."""
    return subprocess.run([str(BOXUI_BIN), *args], capture_output=True, text=True,
                          env=sshd.client_env(sshd.remote_home), timeout=120)


def keeper_dirs(home: Path) -> list[Path]:
    return sorted((home / "run").glob("host-link-r1-*"))


def keeper_pid(home: Path) -> int:
    (link,) = keeper_dirs(home)
    return int((link / "keeper.lock").read_text())


def wait_exit(pid: int) -> bool:
    """True once process `pid` has exited (told by its pidfd), within EXIT_TIMEOUT."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], EXIT_TIMEOUT)[0])
    finally:
        os.close(fd)


def test_every_kind_of_command_acts_on_the_remote(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "r1")
    with daemon_running(sshd.remote_home):
        assert run(sshd, home, "create", "web", "--host", "r1").returncode == 0
        for args in (["pool", "ls", "--json"], ["cells", "--json"], ["template", "ls", "--json"],
                     ["commands", "web", "--json"], ["disk", "show", "web"],
                     ["gc", "--dry-run", "--json"]):
            remote = run(sshd, home, *args, env={"BOXUI_HOST": "r1"})
            own = there(sshd, *args)
            assert (remote.returncode, remote.stdout, remote.stderr) == \
                (own.returncode, own.stdout, own.stderr), args
        machines = json.loads(run(sshd, home, "ls", "--host", "r1", "--json").stdout)
        assert [m["name"] for m in machines] == ["web"]
        # nothing was made here: no machine, no daemon, no cell
        assert not (home / "machines").exists() or not any((home / "machines").iterdir())
        assert not (home / "run" / "api.sock").exists()
        # what the remote would go on reading is refused (files read once are staged:
        # test_hosts_remote_files.py)
        refused = run(sshd, home, "create", "db", "--mount", str(tmp_path),
                      env={"BOXUI_HOST": "r1"})
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "--mount" in refused.stderr, refused.stderr


def test_the_kept_connection_is_shared_replaced_and_idles_out(sshd: Sshd,
                                                              tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "r1")
    with daemon_running(sshd.remote_home):
        assert run(sshd, home, "create", "web", "--host", "r1").returncode == 0
        (link,) = keeper_dirs(home)
        assert stat.S_IMODE(link.stat().st_mode) == 0o700
        for name in ("ctl.sock", "api.sock"):
            assert stat.S_IMODE((link / name).stat().st_mode) == 0o600
        first = keeper_pid(home)
        assert run(sshd, home, "ls", "--host", "r1").returncode == 0
        assert run(sshd, home, "start", "web", "--host", "r1").returncode == 0
        assert keeper_pid(home) == first  # both went through the same connection
        os.kill(first, signal.SIGKILL)  # a dead keeper: its sockets stay behind, stale
        assert wait_exit(first)
        hello = run(sshd, home, "exec", "--host", "r1", "web", "--", "echo", "hi")
        assert (hello.returncode, hello.stdout) == (0, "hi\n"), hello.stderr
        second = keeper_pid(home)
        assert second != first
        os.kill(second, signal.SIGTERM)
        assert wait_exit(second)
        idle = {"BOXUI_HOST_LINK_IDLE": "1"}
        assert run(sshd, home, "ls", "--host", "r1", env=idle).returncode == 0
        assert wait_exit(keeper_pid(home))  # no client for 1 s: it exits by itself
        off = {"BOXUI_HOST_LINK_IDLE": "0"}  # kept connections off: each call its own
        listed = run(sshd, home, "ls", "--host", "r1", "--json", env=off)
        assert [m["name"] for m in json.loads(listed.stdout)] == ["web"], listed.stderr
        assert run(sshd, home, "start", "web", "--host", "r1", env=off).returncode == 0
