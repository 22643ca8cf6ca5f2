from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backend.drivers.base import GuestMemory, VmHandle
from backend.drivers.standin import GuestPlan, StandInDriver
from backend.supervision.health import HealthHistory, HealthSample, HealthSampler

MIB = 1 << 20


def standin(hang: set[str] | None = None, broken: set[str] | None = None) -> StandInDriver:
    """Guest memory is 1000/400 MiB, except for machines told to hang or to fail."""
    plans = {name: GuestPlan(memory="hangs") for name in hang or ()}
    plans |= {name: GuestPlan(memory="fails") for name in broken or ()}
    return StandInDriver(plans, guest_memory_reply=GuestMemory(1000 * MIB, 400 * MIB))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def handle(name: str, proc: subprocess.Popen[bytes], ssh_port: int | None = None,
           start_time: float | None = None) -> VmHandle:
    started = psutil.Process(proc.pid).create_time() if start_time is None else start_time
    return VmHandle(name=name, pid=proc.pid, start_time=started,
                    ssh_port=closed_port() if ssh_port is None else ssh_port, boot_id="b",
                    accel="tcg", console_log=Path("/dev/null"), qmp_socket=Path("/nonexistent"))


@pytest.fixture
def procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {
        "busy": subprocess.Popen([sys.executable, "-c", "while True: pass"]),
        "idle": subprocess.Popen(["sleep", "60"]),
        "idle2": subprocess.Popen(["sleep", "60"]),
    }
    try:
        yield started
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()


def by_name(samples: list[HealthSample]) -> dict[str, HealthSample]:
    return {s.machine: s for s in samples}


async def test_cpu_rss_and_guest_memory(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    handles = {n: handle(n, p) for n, p in procs.items()}
    sampler = HealthSampler(standin(), lambda: handles)
    first = by_name(await sampler.sample_once())
    assert all(s.cpu_percent is None for s in first.values())  # psutil's first reading is 0.0
    assert all(s.rss_bytes is not None and s.rss_bytes > 0 for s in first.values())
    await asyncio.sleep(0.4)
    second = by_name(await sampler.sample_once())
    busy, idle = second["busy"].cpu_percent, second["idle"].cpu_percent
    assert idle is not None and idle < 5
    # ~100 on an idle host; a loaded one gives the spinner far less, never as little as
    # the sleeper's
    assert busy is not None and busy > 2 and busy > 4 * idle
    assert second["idle"].guest_total_bytes == 1000 * MIB
    assert second["idle"].guest_used_bytes == 600 * MIB
    assert sampler.history.latest("busy") == second["busy"]


async def test_hung_or_broken_guest_does_not_stall_the_others(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    handles = {n: handle(n, p) for n, p in procs.items()}
    handles["twin"] = handle("twin", procs["idle"])
    sampler = HealthSampler(standin(hang={"busy", "twin"}, broken={"idle2"}),
                            lambda: handles, timeout=1.0)
    start = time.monotonic()
    samples = by_name(await asyncio.wait_for(sampler.sample_once(), 30))
    elapsed = time.monotonic() - start
    # two hung: bounded by one per-machine timeout, not two (wide: a loaded host is late)
    assert 0.95 < elapsed < 1.9
    assert samples["busy"].guest_total_bytes is None and samples["busy"].rss_bytes
    assert samples["twin"].guest_total_bytes is None
    assert samples["idle2"].guest_used_bytes is None
    assert samples["idle"].guest_free_bytes == 400 * MIB


async def test_run_keeps_its_cadence_without_overlap(
    procs: dict[str, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round every interval, though each waits most of it on a hung machine: the sleep
    is what is left of the interval, never a whole one after the round, and rounds never
    overlap. Timed on the loop's clock and judged by the round that started least late,
    so a loaded host (late wake-ups) cannot fail it: sleeping a whole interval after each
    round would make every round start at least a round's length late."""
    interval, hang = 0.5, 0.3
    handles = {n: handle(n, p) for n, p in procs.items()}
    sampler = HealthSampler(standin(hang={"busy"}), lambda: handles, interval=interval,
                            timeout=hang)
    loop = asyncio.get_running_loop()
    rounds: list[tuple[float, float]] = []
    running = most = 0
    five = asyncio.Event()
    sample_once = sampler.sample_once

    async def timed() -> list[HealthSample]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        started = loop.time()
        try:
            return await sample_once()
        finally:
            running -= 1
            rounds.append((started, loop.time()))
            if len(rounds) == 5:
                five.set()

    monkeypatch.setattr(sampler, "sample_once", timed)
    task = asyncio.create_task(sampler.run())
    try:
        async with asyncio.timeout(60):
            await five.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert most == 1, "rounds overlapped"
    assert all(end - start >= hang * 0.9 for start, end in rounds), "the hung one waited"
    starts = [start for start, _ in rounds]
    assert all(b - a >= interval - 0.01 for a, b in itertools.pairwise(starts)), \
        "a round came before its interval was up"
    late = [nxt - max(start + interval, end)
            for (start, end), nxt in zip(rounds, starts[1:], strict=False)]
    assert min(late) < hang * 0.6, f"every round started late: {late}"
    assert len(sampler.history.samples("idle")) >= 5


def test_history_is_bounded_and_filters_by_time() -> None:
    history = HealthHistory(maxlen=5)
    for i in range(12):
        history.add(HealthSample("m", 100.0 + i, float(i), None, 10, i, None))
    assert [s.time for s in history.samples("m")] == [107, 108, 109, 110, 111]
    assert history.series("m", "cpu_percent", seconds=2.5, now=111.0) == [9.0, 10.0, 11.0]
    assert history.series("m", "guest_used_bytes") == [3.0, 2.0, 1.0, 0.0, -1.0]
    assert history.series("m", "rss_bytes", seconds=1, now=111) == [None, None]
    history.forget("m")
    assert history.latest("m") is None and history.series("m", "cpu_percent") == []


async def test_slow_subscriber_gets_latest_and_a_drop_count(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    handles = {n: handle(n, p) for n, p in procs.items()}
    sampler = HealthSampler(standin(), lambda: handles)
    slow = sampler.subscribe(maxsize=2)
    only_idle = sampler.subscribe(maxsize=1, machine="idle")
    gone = sampler.subscribe(maxsize=10)
    gone.close()
    rounds = [await asyncio.wait_for(sampler.sample_once(), 1) for _ in range(3)]
    assert [slow.get_nowait(), slow.get_nowait(), slow.get_nowait()] == [*rounds[-1][-2:], None]
    assert slow.dropped == 7
    assert await only_idle.get() == by_name(rounds[-1])["idle"]
    assert only_idle.dropped == 2
    assert gone.get_nowait() is None


async def test_dead_or_foreign_process_reads_as_unknown(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    handles = {n: handle(n, p) for n, p in procs.items()}
    handles["idle2"] = handle("idle2", procs["idle2"], start_time=1.0)  # pid "reused"
    sampler = HealthSampler(standin(), lambda: handles)
    before = by_name(await sampler.sample_once())
    assert before["idle"].rss_bytes and before["idle2"].rss_bytes is None
    procs["idle"].kill()
    await asyncio.sleep(0.1)  # not reaped: a zombie is as dead as a vanished pid
    zombie = by_name(await sampler.sample_once())["idle"]
    procs["idle"].wait()
    reaped = by_name(await sampler.sample_once())["idle"]
    for sample in (zombie, reaped):
        assert sample.cpu_percent is None and sample.rss_bytes is None
        assert sample.guest_total_bytes == 1000 * MIB


async def test_ssh_checked_every_nth_round_staggered(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    connections: list[int] = []

    async def sshd(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)  # a guest's sshd would log each of these to its console
        writer.write(b"SSH-2.0-fake\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(sshd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handles = {n: handle(n, p, ssh_port=port if n != "idle2" else None)
               for n, p in procs.items()}
    asked: list[tuple[str, float]] = []

    async def kept_connection(vm: VmHandle, timeout: float) -> bool | None:
        asked.append((vm.name, timeout))
        return bool(vm.ssh_port == port)

    sampler = HealthSampler(standin(), lambda: handles, ssh_every=3,
                            ssh_check=kept_connection)
    async with server:
        rounds = [by_name(await sampler.sample_once()) for _ in range(6)]
    checked = {n: [i for i, r in enumerate(rounds) if r[n].ssh_ok is not None] for n in handles}
    assert sorted(c[0] for c in checked.values()) == [0, 1, 2]  # spread over the rounds
    assert all(c[1] - c[0] == 3 and len(c) == 2 for c in checked.values())
    assert rounds[checked["busy"][0]]["busy"].ssh_ok is True
    assert rounds[checked["idle2"][0]]["idle2"].ssh_ok is False
    assert len(asked) == 6 and connections == []  # never a connection of its own


async def test_without_an_ssh_check_nothing_reaches_the_guest(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    connections: list[int] = []

    async def sshd(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(sshd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handles = {n: handle(n, p, ssh_port=port) for n, p in procs.items()}
    sampler = HealthSampler(standin(), lambda: handles, ssh_every=1)
    async with server:
        rounds = [by_name(await sampler.sample_once()) for _ in range(3)]
    assert all(s.ssh_ok is None for r in rounds for s in r.values())
    assert connections == []


async def test_a_silent_ssh_check_counts_as_no_answer(
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    async def wedged(_vm: VmHandle, _timeout: float) -> bool | None:
        await asyncio.sleep(30)
        return True

    handles = {"busy": handle("busy", procs["busy"])}
    sampler = HealthSampler(standin(), lambda: handles, ssh_every=1, timeout=0.1,
                            ssh_check=wedged)
    async with asyncio.timeout(5):
        sample = by_name(await sampler.sample_once())["busy"]
    assert sample.ssh_ok is False


async def test_stopped_machine_is_forgotten(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    handles = {n: handle(n, p) for n, p in procs.items()}
    sampler = HealthSampler(standin(), lambda: handles)
    await sampler.sample_once()
    del handles["busy"]
    assert {s.machine for s in await sampler.sample_once()} == {"idle", "idle2"}
    assert sampler.history.latest("busy") is None and sampler.history.latest("idle")


async def test_a_large_console_log_is_rotated_keeping_one_previous(
    procs: dict[str, subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    log = tmp_path / "console.log"
    vm = handle("busy", procs["busy"])
    vm.console_log = log
    sampler = HealthSampler(standin(), lambda: {"busy": vm}, ssh_every=1)
    sampler.console_limit = 1000
    log.write_bytes(b"boot\n" * 100)  # 500 bytes: under the limit
    await sampler.sample_once()
    assert log.stat().st_size == 500 and not (tmp_path / "console.log.1").exists()
    with log.open("ab", buffering=0) as fh:  # as QEMU's chardev with append=on writes
        fh.write(b"x" * 1000)
        await sampler.sample_once()
        fh.write(b"after\n")
    assert (tmp_path / "console.log.1").read_bytes() == b"boot\n" * 100 + b"x" * 1000
    assert log.read_bytes() == b"after\n"  # written at the new end, no hole before it
