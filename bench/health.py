"""Does sampling 50 machines cost under 5 % of one core? (issue target)

Run: .venv/bin/python bench/health.py [--machines 50] [--seconds 30] [--interval 1.0]

What stands in for what:
- each QEMU process is a real `sleep` process: psutil reads its /proc entries exactly as
  it would QEMU's (cpu times, rss, create time for the pid-reuse check);
- each QMP monitor is one persistent unix-socket connection per machine to an echo server
  in a *separate* process (this script re-run with --serve), which answers every JSON
  request line with a QMP-shaped `qom-get guest-stats` reply; the fake driver sends one
  request and parses one reply per `guest_memory` call, as the QEMU driver does;
- each guest's sshd is a TCP listener in that same server process that sends an
  `SSH-2.0-...` banner and closes, so every 5th-round SSH check is a real connection.
Only this process's CPU time (time.process_time: user + system, all threads) is counted,
from after a warm-up round (connections opened, psutil primed) to the end of the run; the
server and the `sleep` processes are other processes. One subscriber that never reads is
attached, so every sample also goes through the drop-oldest path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from backend.drivers.base import (
    AdoptRefusal,
    DriverCapabilities,
    ExitInfo,
    GuestMemory,
    HypervisorDriver,
    LaunchSpec,
    ProbeResult,
    StopTimeouts,
    VmHandle,
)
from backend.supervision.health import HealthSample, HealthSampler

TARGET_PERCENT = 5.0
REPLY = {"return": {"last-update": 1, "stats": {"stat-total-memory": 512 << 20,
                                                "stat-available-memory": 300 << 20}}}


async def serve(path: str) -> None:
    async def qmp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line)
            writer.write(json.dumps({**REPLY, "id": request.get("id")}).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def sshd(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6 bench\r\n")
        await writer.drain()
        writer.close()

    unix = await asyncio.start_unix_server(qmp, path)
    tcp = await asyncio.start_server(sshd, "127.0.0.1", 0)
    print(tcp.sockets[0].getsockname()[1], flush=True)
    async with unix, tcp:
        await asyncio.Event().wait()


class BenchDriver(HypervisorDriver):
    """Only `guest_memory` is used by the sampler; the rest is never called here."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._conns: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._ids = 0

    async def guest_memory(self, handle: VmHandle) -> GuestMemory:
        conn = self._conns.get(handle.name)
        if conn is None:
            conn = self._conns[handle.name] = await asyncio.open_unix_connection(
                self.socket_path)
        reader, writer = conn
        self._ids += 1
        request = {"execute": "qom-get", "id": self._ids, "arguments": {
            "path": "/machine/peripheral/balloon0", "property": "guest-stats"}}
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        stats = json.loads(await reader.readline())["return"]["stats"]
        return GuestMemory(stats["stat-total-memory"], stats["stat-available-memory"])

    def capabilities(self) -> DriverCapabilities:
        return DriverCapabilities("bench", snapshots=False, graceful_stop=False, accels=())

    async def start(self, spec: LaunchSpec) -> VmHandle:
        raise NotImplementedError

    async def wait_ready(self, handle: VmHandle, timeout: float) -> None:
        raise NotImplementedError

    async def wait_exit(self, handle: VmHandle) -> ExitInfo:
        raise NotImplementedError

    async def stop(self, handle: VmHandle, timeouts: StopTimeouts) -> ExitInfo:
        raise NotImplementedError

    async def kill(self, handle: VmHandle) -> None:
        raise NotImplementedError

    async def probe(self, handle: VmHandle) -> ProbeResult:
        raise NotImplementedError

    async def adopt(self, *args: object) -> VmHandle | AdoptRefusal:
        raise NotImplementedError


class TimedSampler(HealthSampler):
    rounds: list[float]

    async def sample_once(self) -> list[HealthSample]:
        start = time.perf_counter()
        try:
            return await super().sample_once()
        finally:
            self.rounds.append(time.perf_counter() - start)


async def bench(machines: int, seconds: float, interval: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sock = str(Path(tmp) / "qmp.sock")
        server = subprocess.Popen([sys.executable, __file__, "--serve", sock],
                                  stdout=subprocess.PIPE)
        sleepers = [subprocess.Popen(["sleep", str(int(seconds) + 120)])
                    for _ in range(machines)]
        try:
            assert server.stdout is not None
            ssh_port = int(server.stdout.readline())
            handles = {
                f"vm{i:02d}": VmHandle(
                    name=f"vm{i:02d}", pid=p.pid, start_time=psutil.Process(p.pid).create_time(),
                    ssh_port=ssh_port, boot_id="bench", accel="kvm", console_log=Path(tmp),
                    qmp_socket=Path(sock))
                for i, p in enumerate(sleepers)
            }
            sampler = TimedSampler(BenchDriver(sock), lambda: handles, interval=interval)
            sampler.rounds = []
            sampler.subscribe(maxsize=64)
            warm = await sampler.sample_once()
            assert all(s.guest_total_bytes and s.rss_bytes for s in warm), warm
            sampler.rounds.clear()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            try:
                async with asyncio.timeout(seconds):
                    await sampler.run()
            except TimeoutError:
                pass
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            last = [sampler.history.latest(name) for name in handles]
            assert all(s is not None and s.cpu_percent is not None for s in last)
        finally:
            for p in [*sleepers, server]:
                p.kill()
                p.wait()
    percent = 100 * cpu / wall
    rounds = sorted(sampler.rounds)
    print(f"{'machines':>8} {'seconds':>7} {'rounds':>6} {'cpu s':>7} {'% core':>7} "
          f"{'target':>6}  result")
    print(f"{machines:8d} {wall:7.1f} {len(rounds):6d} {cpu:7.3f} {percent:6.2f}% "
          f"{TARGET_PERCENT:5.0f}%  {'OK' if percent < TARGET_PERCENT else 'MISSED'}")
    print(f"round wall time: median {1000 * rounds[len(rounds) // 2]:.1f} ms, "
          f"max {1000 * rounds[-1]:.1f} ms; cpu per machine-sample "
          f"{1e6 * cpu / max(1, len(rounds) * machines):.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--serve", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
    else:
        asyncio.run(bench(args.machines, args.seconds, args.interval))


if __name__ == "__main__":
    main()
