"""Readiness is this boot's marker on the console, nothing earlier and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backend.drivers.qemu.readiness import scan_console, wait_for_ready
from backend.guest.errors import GuestImageError


def test_scan_console() -> None:
    assert scan_console("noise\nBOXUI-READY abc\n", "abc") is True
    assert scan_console("BOXUI-READY old\n", "abc") is None
    assert scan_console("BOXUI-READY abcdef\n", "abc") is None
    assert scan_console("BOXUI-FAILED sshd-not-listening\n", "abc") is False
    assert scan_console("[ 1.0] Kernel panic - not syncing: x\n", "abc") is False


async def test_waits_for_marker_written_later(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("BOXUI-READY previous-boot\n")

    async def guest() -> None:
        await asyncio.sleep(0.2)
        with log.open("a") as handle:
            handle.write("booting\nBOXUI-RE")
            handle.flush()
            await asyncio.sleep(0.2)
            handle.write("ADY this-boot\n")

    task = asyncio.create_task(guest())
    waited = await wait_for_ready(log, "this-boot", timeout=5)
    await task
    assert 0.3 < waited < 5


async def test_dead_vm_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="exited"):
        await asyncio.wait_for(
            wait_for_ready(tmp_path / "console.log", "x", timeout=60, still_running=lambda: False),
            timeout=2,
        )


async def test_timeout(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="not ready after"):
        await wait_for_ready(tmp_path / "console.log", "x", timeout=0.2)
