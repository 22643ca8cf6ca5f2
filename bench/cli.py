"""How fast the CLI answers with a daemon running: `ls`, a no-op `start`, and `exec`.

    .venv/bin/python bench/cli.py [--machines 1000] [--runs 100] [--cache DIR] [--trace]

One run: it fills a temporary state dir with N stopped machines, starts `boxui daemon` on
it, creates and boots one real guest (QEMU; KVM if usable, else TCG) through the CLI,
then times whole CLI processes as a user would see them (interpreter start-up included):
- `boxui ls` with N+1 machines (target: under 300 ms, as `ls --json` in ls_json.py);
- `boxui start vm` of the running machine (a no-op that still asks the daemon);
- `boxui exec vm -- true`, median and p95, side by side with the system `ssh` into the
  same guest over a ControlMaster connection (`ssh -o ControlMaster=auto -o
  ControlPath=... -o ControlPersist=60`, the machine's own key and known_hosts). Target:
  exec p95 no slower than that ssh's p95, and under 150 ms. Both are warmed first, three
  commands each (the daemon's kept connection, ssh's master), so both measure a command
  on a live connection. 100 runs by default: the p95 of 30 is their second slowest, so
  one stray run decided it.
  `boxui` is what a user runs: after bin/setup, the native exec client
  (boxui/cli/exec_client.c) on the daemon's exec socket; the header says which it is.
- the same exec through Python (`boxui-py`, what a pipx install runs: the API's exec
  route over stdlib HTTP), when the native client is installed.
Where exec's time goes: the request on the exec socket from a warm in-process client (no
process to start, nothing to import), the same on the HTTP route, and of that, the
daemon's time from dispatching the command to its completion (the SSH channel to the
guest, from the command's own record), and what the command registry's journal costs each
command (its three lines, the dispatched one synced) on the state dir's disk.
It also prints the floor every Python CLI command pays: the interpreter starting,
importing what the Python `exec` imports (its hand parser and stdlib request, before
click), and importing the whole click command line (every other command). Runs alternate
exec and ssh so that load on the host hits both alike. Then it stops the guest and the
daemon. `--trace` runs the daemon and the client with BOXUI_EXEC_TRACE and prints the
slowest execs phase by phase (backend/supervision/exec_trace.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.guest.image_builder import build_default_image
from backend.guest.machine_seed import load_machine_keys
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import MachineStore
from backend.state.state_dir import StateDir, open_state_dir
from backend.supervision.exec_trace import TRACE_ENV
from backend.supervision.inflight_commands import CommandRegistry
from backend.supervision.ssh_access import find_ssh, ssh_argv, write_known_hosts

LS_TARGET_MS = 300.0
#: execs and ssh commands run before the timed ones, alike for both
WARM_UP = 3
EXEC_TARGET_MS = 150.0
BOXUI = [str(Path(sys.executable).with_name("boxui"))]
#: the Python entry point beside the native client (bin/setup writes both)
BOXUI_PY = Path(sys.executable).with_name("boxui-py")
#: what `boxui exec` imports before it sends its request
EXEC_IMPORTS = "import boxui.cli.main, boxui.cli.fast_exec, boxui.ssh_commands"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(argv: list[str], env: dict[str, str], timeout: float = 120,
          traces: list[tuple[float, str]] | None = None) -> float:
    """Milliseconds for one whole process; it must succeed. `traces` gets the time and
    the native client's trace line (with --trace)."""
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    elapsed = (time.perf_counter() - started) * 1000
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): "
                         f"{out.stderr.decode(errors='replace').strip()}")
    if traces is not None:
        lines = [line for line in out.stderr.decode(errors="replace").splitlines()
                 if line.startswith("boxui-trace: ")]
        traces.append((elapsed, lines[-1] if lines else ""))
    return elapsed


@contextlib.contextmanager
def daemon(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([*BOXUI, "daemon"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr
    try:
        for line in stderr:
            if "supervising" in line:
                break
        else:
            raise SystemExit("boxui daemon did not start")
        threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def controlmaster_argv(dirs: StateDir, name: str, control: Path) -> list[str]:
    machine_dir = dirs.machine_dir(name)
    keys = load_machine_keys(machine_dir)
    port = MachineStore(dirs).load_record(name).ssh_port
    assert port is not None
    write_known_hosts(machine_dir, keys, port)
    argv = ssh_argv(machine_dir, keys, port, ["true"], find_ssh())
    return [argv[0], "-F", "none", "-o", "BatchMode=yes", "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control}", "-o", "ControlPersist=60", *argv[1:]]


def daemon_side(dirs: StateDir, runs: int) -> tuple[list[float], list[float]]:
    """Milliseconds of exec requests from a warm client, and of each the daemon's time
    from dispatching the command to its completion."""
    transport = httpx.HTTPTransport(uds=str(dirs.api_socket))
    trips: list[float] = []
    channel: list[float] = []
    with httpx.Client(transport=transport, base_url="http://boxui", timeout=60) as client:
        for _ in range(runs):
            started = time.perf_counter()
            answer = client.post("/v1/machines/vm/exec", json={"argv": ["true"]})
            trips.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            record = answer.json()["command"]
            done = datetime.fromisoformat(record["completed_at"])
            channel.append((done - datetime.fromisoformat(record["dispatched_at"]))
                           .total_seconds() * 1000)
    return trips, channel


def registry_cost(dirs: StateDir, runs: int) -> list[float]:
    """Milliseconds of one command's registry writes (pending, dispatched and synced,
    succeeded) in a journal on the state dir's file system, as exec pays them."""
    async def measure() -> list[float]:
        times: list[float] = []
        with tempfile.TemporaryDirectory(dir=dirs.root) as scratch:
            registry = CommandRegistry.open(scratch)
            for _ in range(max(runs, 50)):
                started = time.perf_counter()
                record = registry.begin("vm", ["true"])
                registry.dispatch(record.id)
                await registry.flush("vm")
                await registry.finish(record.id, exit_code=0, response_size=0)
                times.append((time.perf_counter() - started) * 1000)
        return times

    return asyncio.run(measure())


def native_client() -> bool:
    with open(BOXUI[0], "rb") as entry:
        return entry.read(4) == b"\x7fELF"


def exec_socket_trips(dirs: StateDir, runs: int) -> list[float]:
    """Milliseconds of `true` on the exec socket from a warm client: the daemon's part of
    what the native client waits for."""
    request = b"BXE1" + struct.pack(">I", 2) + b"".join(
        struct.pack(">I", len(word)) + word for word in (b"vm", b"true"))
    trips = []
    for _ in range(runs):
        started = time.perf_counter()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(60)
            sock.connect(str(dirs.exec_socket))
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"x" + struct.pack(">I", 4) + struct.pack(">i", 0)):
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit(f"the exec socket answered {answer[:200]!r}")
                answer += chunk
        trips.append((time.perf_counter() - started) * 1000)
    return trips


def row(label: str, times: list[float], target: str = "-") -> None:
    print(f"{label:<34} {statistics.median(times):>7.1f} {percentile(times, 0.95):>7.1f} "
          f"{min(times):>7.1f} {max(times):>7.1f}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--trace", action="store_true",
                        help="trace each exec's phases (BOXUI_EXEC_TRACE) and show the "
                        "slowest ones")
    parser.add_argument("--cache", type=Path, default=Path(
        os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache")))
    args = parser.parse_args()
    asyncio.run(build_default_image(args.cache))  # built once, outside the timings
    with tempfile.TemporaryDirectory(prefix="bxc-", dir="/tmp") as tmp:
        home = Path(tmp) / "h"
        dirs = open_state_dir(home)
        (home / "images").symlink_to(args.cache)
        store = MachineStore(dirs)
        for i in range(args.machines):
            store.create(MachineSpec(name=f"m{i:05d}", vcpus=1 + i % 4, memory_mib=256))
        env = dict(os.environ, BOXUI_HOME=str(home))
        args.trace = Path(tmp) / "exec-trace.jsonl" if args.trace else None
        if args.trace is not None:
            env[TRACE_ENV] = str(args.trace)
        with daemon(env):
            try:
                measure(args, dirs, env, Path(tmp) / "cm")
            finally:
                subprocess.run([*BOXUI, "stop", "--force", "vm"], env=env,
                               capture_output=True, timeout=120)


def measure(args: argparse.Namespace, dirs: StateDir, env: dict[str, str],
            control: Path) -> None:
    started = time.perf_counter()
    timed([*BOXUI, "create", "vm", "--memory", "256"], env, timeout=900)  # TCG, loaded: slow
    boot = time.perf_counter() - started
    floor = [timed([sys.executable, "-c", "pass"], env) for _ in range(10)]
    exec_imports = [timed([sys.executable, "-c", EXEC_IMPORTS], env) for _ in range(10)]
    imports = [timed([sys.executable, "-c", "import boxui.cli.root"], env) for _ in range(10)]
    ls = [timed([*BOXUI, "ls"], env) for _ in range(max(7, args.runs // 3))]
    start = [timed([*BOXUI, "start", "vm"], env) for _ in range(max(7, args.runs // 3))]
    exec_argv = [*BOXUI, "exec", "vm", "--", "true"]
    ssh = controlmaster_argv(dirs, "vm", control)
    for _ in range(WARM_UP):  # the daemon's connection to the guest, ssh's master
        timed(exec_argv, env)
        timed(ssh, env)
    exec_times: list[float] = []
    ssh_times: list[float] = []
    client_traces: list[tuple[float, str]] = []
    try:
        for _ in range(args.runs):
            exec_times.append(timed(exec_argv, env, traces=client_traces))
            ssh_times.append(timed(ssh, env))
    finally:
        subprocess.run([*ssh[:-3], "-O", "exit", ssh[-3]], capture_output=True, timeout=30)
    native = native_client()
    python_exec = [timed([str(BOXUI_PY), *exec_argv[1:]], env) for _ in range(args.runs)] \
        if native else []
    socket_trips = exec_socket_trips(dirs, args.runs)
    trips, channel = daemon_side(dirs, args.runs)
    report(args, boot, [floor, exec_imports, imports], ls, start, exec_times, ssh_times)
    if args.trace is not None:
        report_slowest(client_traces, args.trace)
    if python_exec:
        row(f"boxui-py exec (Python path, {args.runs})", python_exec)
    row("  exec socket request, warm client", socket_trips)
    row("  HTTP exec request, warm client", trips)
    row("  of it: dispatched -> completed", channel)
    row("  of it: the registry's writes", registry_cost(dirs, args.runs))


def report_slowest(client_traces: list[tuple[float, str]], trace: Path, count: int = 5) -> None:
    """The slowest execs: the client's phases and the daemon's (the request that began
    while that client ran), in ms from each one's start."""
    daemon_lines = [json.loads(line) for line in trace.read_text().splitlines()]
    print(f"the {count} slowest execs (ms; client: from its start, daemon: from accepting)")
    for elapsed, line in sorted(client_traces, reverse=True)[:count]:
        fields = {key: value for key, _, value in (
            part.partition("=") for part in line.removeprefix("boxui-trace: ")
            .replace("first frame", "first_frame").split())}
        start = int(fields.pop("start_ns", "0"))
        end = start + float(fields.get("end", "0")) * 1e6
        print(f"  {elapsed:6.1f}  client: " + " ".join(f"{k} {v}" for k, v in fields.items()))
        for entry in daemon_lines:
            if start <= entry["start_ns"] <= end:
                at = (entry["start_ns"] - start) / 1e6
                print(f"          daemon (at {at:.1f}): " + ", ".join(
                    f"{label} {ms}" for label, ms in entry["phases"]))
                if entry["gc"]:
                    print(f"          gc (at, ms, generation): {entry['gc']}")


def report(args: argparse.Namespace, boot: float, floors: list[list[float]],
           ls: list[float], start: list[float], exec_times: list[float],
           ssh_times: list[float]) -> None:
    load = os.getloadavg()[0]
    print(f"boxui CLI with a daemon, {args.machines + 1} machines, one real guest "
          f"(booted in {boot:.1f} s), {os.cpu_count()} CPUs, load average {load:.1f}")
    entry = "the native exec client (exec_client.c)" if native_client() else \
        "the Python entry point"
    print(f"{BOXUI[0]} is {entry}")
    print(f"{'ms per process':<34} {'median':>7} {'p95':>7} {'min':>7} {'max':>7}  target")
    floor, exec_imports, imports = floors
    row("python -c pass (floor)", floor)
    row("python: Python exec's imports", exec_imports)
    row("python -c 'import boxui.cli.root'", imports)
    ls_ok = statistics.median(ls) < LS_TARGET_MS
    row(f"boxui ls ({args.machines + 1} machines)", ls,
        f"median < {LS_TARGET_MS:.0f}: {'OK' if ls_ok else 'MISSED'}")
    row("boxui start vm (running: no-op)", start)
    row(f"ssh ControlMaster -- true ({args.runs})", ssh_times)
    exec_p95, ssh_p95 = percentile(exec_times, 0.95), percentile(ssh_times, 0.95)
    ok = exec_p95 <= ssh_p95 and exec_p95 < EXEC_TARGET_MS
    row(f"boxui exec vm -- true ({args.runs})", exec_times,
        f"p95 <= ssh p95 ({ssh_p95:.0f}) and < {EXEC_TARGET_MS:.0f}: "
        f"{'OK' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
