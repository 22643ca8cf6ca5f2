"""Control API throughput and event-stream latency, against a real `boxui daemon`.

Run: .venv/bin/python bench/api.py [--machines 200] [--seconds 5] [--events 200]
It fills a temporary state dir with N machines (stopped: list and get do not need a
running guest), starts `boxui daemon` on it, and over the unix socket measures:
- requests per second for GET /v1/machines (all N) and GET /v1/machines/{name},
  one client in sequence and 8 concurrent clients;
- event-stream latency: from the moment the daemon creates an event (its `time`) to the
  moment a client following GET /v1/events has parsed the line, for events produced by
  create/delete requests. It includes the durable log append (fsync) that precedes every
  publish, because that is what a client waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import MachineStore
from backend.state.state_dir import open_state_dir


def start_daemon(home: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, BOXUI_HOME=str(home))
    proc = subprocess.Popen([sys.executable, "-m", "boxui", "daemon"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "supervising" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr],  # type: ignore[union-attr]
                             daemon=True).start()
            return proc
    raise SystemExit("daemon did not start")


def client(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                        base_url="http://boxui", timeout=30)


def rate_sequential(sock: Path, paths: list[str], seconds: float) -> float:
    with client(sock) as c:
        c.get(paths[0]).raise_for_status()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            c.get(paths[count % len(paths)]).raise_for_status()
            count += 1
        return count / (time.perf_counter() - start)


async def _rate_concurrent(sock: Path, paths: list[str], seconds: float, workers: int) -> float:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://boxui",
                                 timeout=30) as c:
        count = 0
        start = time.perf_counter()

        async def work(offset: int) -> None:
            nonlocal count
            i = offset
            while time.perf_counter() - start < seconds:
                (await c.get(paths[i % len(paths)])).raise_for_status()
                count += 1
                i += workers

        await asyncio.gather(*(work(i) for i in range(workers)))
        return count / (time.perf_counter() - start)


def event_latencies(sock: Path, events: int) -> list[float]:
    latencies: list[float] = []
    subscribed = threading.Event()

    def produce() -> None:
        subscribed.wait()
        with client(sock) as c:
            i = 0
            while len(latencies) < events:
                c.post("/v1/machines", json={"name": f"ev{i:05d}"}).raise_for_status()
                c.delete(f"/v1/machines/ev{i:05d}").raise_for_status()
                i += 1

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    with client(sock) as c, c.stream("GET", "/v1/events") as response:
        for line in response.iter_lines():
            event = json.loads(line)
            received = datetime.now(UTC)
            if event["type"].endswith("stream.v1.subscribed"):
                subscribed.set()
                continue
            sent = datetime.fromisoformat(event["time"])
            latencies.append((received - sent).total_seconds() * 1000)
            if len(latencies) >= events:
                break
    producer.join(30)
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bx-bench-") as tmp:
        home = Path(tmp) / "home"
        dirs = open_state_dir(home)
        store = MachineStore(dirs)
        names = [f"m{i:05d}" for i in range(args.machines)]
        for i, name in enumerate(names):
            store.create(MachineSpec(name=name, vcpus=1 + i % 4, memory_mib=256))
        daemon = start_daemon(home)
        try:
            sock = dirs.api_socket
            with client(sock) as c:
                assert len(c.get("/v1/machines").json()) == args.machines
            gets = [f"/v1/machines/{n}" for n in random.Random(1).sample(names, len(names))]
            results = [
                ("GET /v1/machines (list)", ["/v1/machines"]),
                ("GET /v1/machines/{name}", gets),
            ]
            print(f"boxui control API, {args.machines} machines, unix socket, "
                  f"{args.seconds:g} s per figure, {os.cpu_count()} CPUs")
            print(f"{'request':<28} {'1 client':>12} {'8 clients':>12}")
            for label, paths in results:
                one = rate_sequential(sock, paths, args.seconds)
                many = asyncio.run(_rate_concurrent(sock, paths, args.seconds, 8))
                print(f"{label:<28} {one:9.0f}/s {many:9.0f}/s")
            lat = event_latencies(sock, args.events)
            print(f"event stream latency, {len(lat)} events (created -> parsed by client): "
                  f"p50 {statistics.median(lat):.1f} ms, p95 {pct(lat, 0.95):.1f} ms, "
                  f"max {max(lat):.1f} ms")
        finally:
            daemon.terminate()
            daemon.wait(30)


if __name__ == "__main__":
    main()
