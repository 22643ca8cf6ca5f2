"""A boxui guest booting on a libvirt host: through boxui against `virsh start`.

Target (issue 17, `bench/hosts.py`'s libvirt row): boxui adds under 5 % (ratio <= 1.05).

    .venv/bin/python bench/libvirt_boot.py [--runs N] [--cache DIR] [--uri URI]

Without `--uri` it starts a private libvirtd as the tests do (root; see
`tests/libvirt_helpers.py`). Both sides boot the same domain (boxui's default guest,
defined by `LibvirtHost.create`):
- virsh: `virsh -c URI start NAME`; the clock stops when the readiness marker
  `BOXUI-READY <boot_id>` appears in the console log virtlogd writes (told by inotify);
- boxui: `LibvirtHost.start(NAME, ready_timeout=...)`, which starts the domain paused,
  attaches the console stream, resumes it and returns once the marker has come through
  libvirt's stream and boxui has published the machine `ready`.
Runs alternate (virsh, boxui, ...) so the host's load hits both alike. Between runs the
domain is stopped (ACPI). `row()` returns the figures for `bench/hosts.py` to print.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest

from backend.drivers.console_watch import ConsoleTail, wait_for_line
from backend.drivers.libvirt.host import LibvirtHost
from backend.drivers.qemu.readiness import scan_console
from tests.libvirt_helpers import LibvirtGuest, default_guest_launch, running_libvirtd

NAME = "bench-lv"
READY_TIMEOUT = 600.0


async def virsh_start(uri: str, guest: LibvirtGuest) -> float:
    log = guest.spec.console_log
    tail = ConsoleTail(log, log.stat().st_size if log.exists() else 0)
    stop = asyncio.Event()
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "virsh", "-q", "-c", uri, "start", NAME, stdout=asyncio.subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise SystemExit("virsh start failed")
    async with asyncio.timeout(READY_TIMEOUT):
        seen = await wait_for_line(tail, lambda line: scan_console(line, guest.spec.boot_id),
                                   stop)
    if seen is not True:
        raise SystemExit(f"the guest did not get ready; see {log}")
    return time.monotonic() - began


async def boxui_start(host: LibvirtHost) -> float:
    began = time.monotonic()
    await host.start(NAME, ready_timeout=READY_TIMEOUT)
    return time.monotonic() - began


async def row(uri: str, cache: Path, runs: int) -> dict[str, list[float]]:
    """Each side's times to ready, in seconds, `runs` of each."""
    times: dict[str, list[float]] = {"virsh": [], "boxui": []}
    with tempfile.TemporaryDirectory(prefix="lvb-", dir="/tmp") as work:
        guest = await default_guest_launch(Path(work), NAME, cache)
        async with LibvirtHost(uri) as host:
            await host.create(guest.spec)
            try:
                for _ in range(runs):
                    times["virsh"].append(await virsh_start(uri, guest))
                    await host.stop(NAME, timeout=60)
                    times["boxui"].append(await boxui_start(host))
                    await host.stop(NAME, timeout=60)
            finally:
                await host.delete(NAME)
    return times


@contextlib.contextmanager
def libvirt_uri(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    try:
        daemon_cm = running_libvirtd()
        daemon = daemon_cm.__enter__()
    except pytest.skip.Exception as exc:  # the helper is the tests': it skips, here we stop
        raise SystemExit(f"libvirt_boot: {exc.msg}") from None
    try:
        yield daemon.uri
    finally:
        daemon_cm.__exit__(None, None, None)


def report(times: dict[str, list[float]], uri: str) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"libvirt boot to ready ({uri}), {os.cpu_count()} CPUs, load average {load}")
    for side in ("virsh", "boxui"):
        runs = "  ".join(f"{t:6.2f}" for t in times[side])
        print(f"  {side:<6} runs (s): {runs}")
    virsh, boxui = statistics.median(times["virsh"]), statistics.median(times["boxui"])
    ratio = boxui / virsh
    print(f"{'figure':<38}{'value':>9}   target")
    print(f"{'virsh start to ready (median)':<38}{virsh:7.2f} s")
    print(f"{'boxui start to ready (median)':<38}{boxui:7.2f} s")
    verdict = "OK" if ratio <= 1.05 else "MISSED"
    print(f"{'ratio boxui / virsh':<38}{ratio:9.3f}   <= 1.05: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--uri", help="a libvirt URI; default: a private libvirtd")
    parser.add_argument("--cache", type=Path, default=Path(
        os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache")))
    args = parser.parse_args()
    with libvirt_uri(args.uri) as uri:
        times = asyncio.run(row(uri, args.cache, args.runs))
    report(times, uri)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
