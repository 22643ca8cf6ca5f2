"""How long `boxui ls --json` takes with 1,000 machines on disk (target: under 300 ms).

Run: .venv/bin/python bench/ls_json.py [--machines N] [--runs R]
It fills a temporary state dir, then times whole `boxui ls --json` processes (interpreter
start-up included, as a user would experience it) and prints min / median / max, plus the
first run, which validates every machine and fills the listing cache.
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

from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import MachineStore
from backend.state.state_dir import open_state_dir

TARGET_MS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        store = MachineStore(open_state_dir(home))
        for i in range(args.machines):
            store.create(MachineSpec(name=f"m{i:05d}", vcpus=1 + i % 4, memory_mib=256))
        env = dict(os.environ, BOXUI_HOME=str(home))
        cmd = [sys.executable, "-m", "boxui", "ls", "--json"]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)  # fills the ls cache
        cold = (time.perf_counter() - start) * 1000
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, check=True)
            times.append((time.perf_counter() - start) * 1000)
        assert out.stdout.count(b'"name"') >= args.machines
    median = statistics.median(times)
    print(f"boxui ls --json, {args.machines} machines, {args.runs} runs")
    print(f"{'min':>8} {'median':>8} {'max':>8}  target")
    print(f"{min(times):7.0f}ms {median:7.0f}ms {max(times):7.0f}ms  <{TARGET_MS:.0f}ms "
          f"{'OK' if median < TARGET_MS else 'MISSED'}")
    print(f"first run, every machine validated and cached: {cold:.0f}ms")


if __name__ == "__main__":
    main()
