"""What reaching a remote boxui over SSH adds to `ls`, a no-op `start` and `exec`.

    .venv/bin/python bench/hosts.py [--runs 20]

One run: it starts an sshd on a random 127.0.0.1 port (tests/sshd_helpers.py: throw-away
host key, an authorized key whose login gets its own state dir and this repo's boxui on
PATH) and a daemon over the stand-in driver in that state dir (tests/fake_daemon.py: its
"guests" are processes and exec runs the command on this host, so the figures are the
CLI, SSH and API path, not a guest's), with one machine in it. Then it times whole CLI
processes, each as a user runs it (`.venv/bin/boxui`), alternating local and remote runs
so load hits both alike:
- local: `boxui ls`, `boxui start vm` (already running: a no-op that asks the daemon),
  `boxui exec vm -- true`, with BOXUI_HOME the served state dir;
- remote: the same with `--host r1` from another state dir, through loopback SSH (each
  command opens its own SSH connection: nothing is kept between CLI processes).
It prints median and p95 of each, and what the remote adds. Issue 17 sets no target
for these: figures only. The libvirt row (a guest booting on a libvirt host to ready in
boxui, against `virsh start`) belongs to the libvirt driver: `libvirt_rows` is its hook.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_helpers import daemon_running, kill_stand_ins
from tests.sshd_helpers import Sshd, sshd_running

REPO = Path(__file__).resolve().parent.parent
BOXUI = str(REPO / ".venv" / "bin" / "boxui")
COMMANDS = {"ls": ["ls"], "start (no-op)": ["start", "vm"],
            "exec": ["exec", "vm", "--", "true"]}


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    if out.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[1:])} failed: {out.stderr.strip()}")
    return elapsed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def libvirt_rows(sshd: Sshd, runs: int) -> list[str]:
    """The libvirt driver's figures (time to ready in boxui against `virsh start`), as
    printed lines: none until that driver fills this in."""
    return []


def measure(sshd: Sshd, local_home: Path, runs: int) -> dict[str, tuple[list[float], ...]]:
    local_env = sshd.client_env(sshd.remote_home)
    remote_env = sshd.client_env(local_home)
    figures: dict[str, tuple[list[float], ...]] = {}
    for label, args in COMMANDS.items():
        local: list[float] = []
        remote: list[float] = []
        timed([BOXUI, *args], local_env)  # warm: page cache, the daemon's connection
        there = [BOXUI, args[0], "--host", "r1", *args[1:]]
        timed(there, remote_env)
        for _ in range(runs):
            local.append(timed([BOXUI, *args], local_env))
            remote.append(timed(there, remote_env))
        figures[label] = (local, remote)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="boxui-bench-hosts-") as tmp:
        root = Path(tmp)
        remote_home, local_home = root / "remote", root / "local"
        with sshd_running(root / "sshd", remote_home) as sshd, daemon_running(remote_home):
            env = sshd.client_env(local_home)
            for argv in (["host", "add", "r1", sshd.address, "--identity",
                          str(sshd.identity)], ["create", "vm", "--host", "r1"]):
                subprocess.run([BOXUI, *argv], env=env, check=True, capture_output=True,
                               timeout=120)
            figures = measure(sshd, local_home, args.runs)
            extra = libvirt_rows(sshd, args.runs)
        kill_stand_ins(remote_home)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench/hosts.py: {args.runs} runs each, loopback SSH, stand-in guest; "
          f"load average {load}")
    print(f"{'command':<16}{'local med/p95 ms':>20}{'remote med/p95 ms':>20}"
          f"{'added med/p95 ms':>20}")
    for label, (local, remote) in figures.items():
        lm, lp = statistics.median(local), p95(local)
        rm, rp = statistics.median(remote), p95(remote)
        print(f"{label:<16}{f'{lm:.1f}/{lp:.1f}':>20}{f'{rm:.1f}/{rp:.1f}':>20}"
              f"{f'{rm - lm:.1f}/{rp - lp:.1f}':>20}")
    for line in extra or ["libvirt: no figures (the libvirt driver fills in libvirt_rows)"]:
        print(line)


if __name__ == "__main__":
    main()
