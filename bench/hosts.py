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
- remote, kept: the same with `--host r1` from another state dir, through loopback SSH,
  over the host's kept connection (`backend.hosts.kept_link`: started by the warm-up
  call, shared by the later ones);
- remote, unkept: the same with BOXUI_HOST_LINK_IDLE=0: each command opens its own SSH
  connection (what every call paid before kept connections).
It prints median and p95 of each, and what the remote adds with and without the kept
connection. `ls` is relayed (the remote's own `boxui ls` runs there, so it also pays a
Python start on the remote: the local `ls` row is that cost); `start` and `exec` go
through the remote API. Issue 17 sets no target for these: figures only.

The libvirt row (`--libvirt-runs N`, default 2; 0 skips it): a private libvirtd as the
tests start one (root; `tests/libvirt_helpers.py`), or `--libvirt-uri URI`, added as
host `lv`, and one boxui machine made there (`boxui create lvb --host lv --no-start`:
boxui's default guest, from BOXUI_GUEST_CACHE). Runs alternate, so load hits both alike:
- virsh: `virsh -c URI start lvb`, until the guest's ready marker (`BOXUI-READY
  <boot_id>`) is in the console log virtlogd writes (told by inotify);
- boxui: the whole `boxui start lvb --host lv` process, which writes a new seed, starts the
  domain paused, attaches its console, resumes it and exits once the marker has come
  through libvirt's console stream: the machine is `ready` in boxui.
Between runs `boxui stop --host lv lvb` (ACPI). The issue sets no target for it; the
added seconds are what a user pays for boxui's own start (its CLI, the seed, the domain).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.drivers.console_watch import ConsoleTail, wait_for_line
from backend.drivers.qemu.readiness import scan_console
from backend.hosts.kept_link import stop_keepers
from backend.state.state_dir import open_state_dir
from tests.conftest import IMAGE_CACHE
from tests.daemon_helpers import daemon_running, kill_stand_ins
from tests.sshd_helpers import Sshd, sshd_running

REPO = Path(__file__).resolve().parent.parent
BOXUI = str(REPO / ".venv" / "bin" / "boxui")
COMMANDS = {"ls": ["ls"], "start (no-op)": ["start", "vm"],
            "exec": ["exec", "vm", "--", "true"]}


def timed(argv: list[str], env: dict[str, str], timeout: float = 120) -> float:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = (time.perf_counter() - started) * 1000
    if out.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[1:])} failed: {out.stderr.strip()}")
    return elapsed


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


LIBVIRT_READY_TIMEOUT = 600.0


@contextlib.contextmanager
def libvirt_uri(given: str | None) -> Iterator[str]:
    """`given`, or a private libvirtd's URI for as long as the block runs."""
    if given:
        yield given
        return
    import pytest

    from tests.libvirt_helpers import running_libvirtd

    try:
        daemon_cm = running_libvirtd()
        daemon = daemon_cm.__enter__()
    except pytest.skip.Exception as exc:  # the tests' helper skips; here it is a reason
        raise RuntimeError(exc.msg) from None
    try:
        yield daemon.uri
    finally:
        daemon_cm.__exit__(None, None, None)


async def virsh_to_ready(uri: str, machine: Path) -> float:
    """`virsh start` until this boot's ready marker is in the console log (seconds)."""
    boot_id = json.loads((machine / "libvirt.json").read_text())["boot_id"]
    log = machine / "console.log"
    tail = ConsoleTail(log, log.stat().st_size if log.exists() else 0)
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("virsh", "-q", "-c", uri, "start", "lvb",
                                                stdout=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise RuntimeError("virsh start failed")
    async with asyncio.timeout(LIBVIRT_READY_TIMEOUT):
        seen = await wait_for_line(tail, lambda line: scan_console(line, boot_id),
                                   asyncio.Event())
    if seen is not True:
        raise RuntimeError(f"the guest did not get ready under virsh; see {log}")
    return time.perf_counter() - began


def libvirt_times(uri: str, runs: int) -> dict[str, list[float]]:
    """Each side's seconds to ready, `runs` of each, on a state dir made for them."""
    home = Path(tempfile.mkdtemp(prefix="bxlv-", dir="/tmp"))  # short: socket paths
    env = os.environ | {"BOXUI_HOME": str(home)}
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    (home / "images").symlink_to(IMAGE_CACHE)

    def boxui(*argv: str) -> float:
        return timed([BOXUI, *argv], env, timeout=LIBVIRT_READY_TIMEOUT) / 1000

    times: dict[str, list[float]] = {"virsh": [], "boxui": []}
    try:
        boxui("host", "add", "lv", "--libvirt", uri)
        boxui("create", "lvb", "--host", "lv", "--no-start")
        try:
            for _ in range(runs):
                times["virsh"].append(asyncio.run(
                    virsh_to_ready(uri, home / "hosts" / "lv" / "lvb")))
                boxui("stop", "lvb", "--host", "lv")
                times["boxui"].append(boxui("start", "lvb", "--host", "lv"))
                boxui("stop", "lvb", "--host", "lv")
        finally:
            subprocess.run([BOXUI, "rm", "lvb", "--force", "--host", "lv"], env=env,
                           capture_output=True, timeout=120)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return times


def libvirt_rows(uri: str | None, runs: int) -> list[str]:
    """The libvirt row: a guest booting on a libvirt host to ready in boxui, against
    `virsh start` to the same point, as printed lines."""
    if runs <= 0:
        return ["libvirt: skipped (--libvirt-runs 0)"]
    try:
        with libvirt_uri(uri) as where:
            times = libvirt_times(where, runs)
    except (RuntimeError, SystemExit) as exc:
        return [f"libvirt: no figures ({exc})"]
    virsh, boxui = statistics.median(times["virsh"]), statistics.median(times["boxui"])
    ratio = boxui / virsh
    label = "a private libvirtd" if uri is None else uri
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"libvirt ({label}), {runs} boots each, boot to ready; load average {load}",
            "  virsh start runs (s): " + "  ".join(f"{t:.2f}" for t in times["virsh"]),
            "  boxui start runs (s): " + "  ".join(f"{t:.2f}" for t in times["boxui"]),
            f"{'virsh start to ready (median)':<38}{virsh:7.2f} s",
            f"{'boxui start --host lv to ready':<38}{boxui:7.2f} s",
            f"{'boxui added (median)':<38}{boxui - virsh:7.2f} s",
            f"{'ratio boxui / virsh':<38}{ratio:9.3f}   (no target)"]


#: the ways each command is run, and the environment each adds
VARIANTS = {"local": {}, "kept": {}, "unkept": {"BOXUI_HOST_LINK_IDLE": "0"}}


def measure(sshd: Sshd, local_home: Path, runs: int) -> dict[str, dict[str, list[float]]]:
    envs = {"local": sshd.client_env(sshd.remote_home)}
    for variant in ("kept", "unkept"):
        envs[variant] = sshd.client_env(local_home) | VARIANTS[variant]
    figures: dict[str, dict[str, list[float]]] = {}
    for label, args in COMMANDS.items():
        argvs = {"local": [BOXUI, *args]}
        argvs["kept"] = argvs["unkept"] = [BOXUI, args[0], "--host", "r1", *args[1:]]
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for variant in VARIANTS:  # warm: page cache, the daemon's and the kept connection
            timed(argvs[variant], envs[variant])
        for _ in range(runs):
            for variant in VARIANTS:
                times[variant].append(timed(argvs[variant], envs[variant]))
        figures[label] = times
    return figures


def print_figures(runs: int, figures: dict[str, dict[str, list[float]]]) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench/hosts.py: {runs} runs each, loopback SSH, stand-in guest; "
          f"load average {load}")
    print(f"{'command':<16}{'local med/p95 ms':>18}{'kept med/p95':>18}{'unkept med/p95':>18}"
          f"{'added kept':>16}{'added unkept':>16}")
    for label, times in figures.items():
        med = {v: statistics.median(t) for v, t in times.items()}
        top = {v: p95(t) for v, t in times.items()}
        cells = [f"{med[v]:.1f}/{top[v]:.1f}" for v in VARIANTS]
        added = [f"{med[v] - med['local']:.1f}/{top[v] - top['local']:.1f}"
                 for v in ("kept", "unkept")]
        print(f"{label:<16}{cells[0]:>18}{cells[1]:>18}{cells[2]:>18}"
              f"{added[0]:>16}{added[1]:>16}")
    print("(added: remote minus local, median/p95 ms; `ls` is relayed, so its added time "
          "includes a boxui start on the remote, about the local `ls` row)")


class Terminated(BaseException):
    """SIGTERM (`timeout`, a closed terminal): unwinds as Ctrl-C does, through every
    `finally`, so the private sshd, daemon, libvirtd and virtlogd and their guests are
    stopped rather than left behind; nothing on the way catches it."""


def _unwind(_signum: int, _frame: object) -> None:
    raise Terminated


def main() -> None:
    signal.signal(signal.SIGTERM, _unwind)
    try:
        _main()
    except Terminated:
        sys.exit(128 + signal.SIGTERM)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--libvirt-runs", type=int, default=2,
                        help="boots each for the libvirt row (0: skip it)")
    parser.add_argument("--libvirt-uri", help="a libvirt URI; default: a private libvirtd")
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
            stop_keepers(open_state_dir(local_home))
        kill_stand_ins(remote_home)
    extra = libvirt_rows(args.libvirt_uri, args.libvirt_runs)
    print_figures(args.runs, figures)
    for line in extra:
        print(line)


if __name__ == "__main__":
    main()
