"""The few QMP operations boxui needs, with the facts checked on QEMU 7.2 microvm.

- Balloon statistics: the virtio balloon only reports after the host sets
  `guest-stats-polling-interval` (seconds) on the device; `guest-stats` then returns
  `{"stats": {...}, "last-update": <unix time>}` with `last-update` 0 until the guest
  driver has answered once. The device is at `BALLOON_QOM_PATH` because the command
  line gives it a fixed id.
- Graceful stop: `system_powerdown` = ACPI power button; the guest powers off and QEMU
  exits by itself (no `quit` needed).
- Memory snapshots: see the section below.

Every command here has a deadline (`QMP_TIMEOUT`): a hung QEMU (deadlocked, on a stalled
disk, SIGSTOPped) accepts the command on its socket and never answers, and no lifecycle
step may wait on it for ever. A migration's progress is bounded by its caller's deadline.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, cast

from qemu.qmp import EventListener, QMPClient

from backend.drivers.qemu.cmdline import BALLOON_QOM_PATH

#: seconds any one QMP command may take to answer (they answer in milliseconds)
QMP_TIMEOUT = 5.0


async def execute(client: QMPClient, command: str, arguments: dict[str, Any] | None = None,
                  *, timeout: float = QMP_TIMEOUT) -> object:
    """One QMP command; raises TimeoutError when QEMU does not answer within `timeout`."""
    async with asyncio.timeout(timeout):
        return await client.execute(command, arguments)


async def enable_balloon_stats(client: QMPClient, interval_s: int = 2) -> None:
    """Ask the guest's balloon driver to report memory stats every `interval_s` seconds."""
    await execute(
        client, "qom-set",
        {"path": BALLOON_QOM_PATH, "property": "guest-stats-polling-interval", "value": interval_s},
    )


async def read_balloon_stats(client: QMPClient) -> dict[str, Any]:
    """The latest `guest-stats` (`stats` maps e.g. `stat-free-memory` to bytes)."""
    result = await execute(client, "qom-get",
                           {"path": BALLOON_QOM_PATH, "property": "guest-stats"})
    return cast(dict[str, Any], result)


async def request_powerdown(client: QMPClient) -> None:
    """Press the (ACPI) power button; the guest shuts down cleanly and QEMU exits."""
    await execute(client, "system_powerdown")


async def request_quit(client: QMPClient) -> None:
    """Tell QEMU to exit now (the guest is not asked: its SHUTDOWN reason is
    `host-qmp-quit`)."""
    await execute(client, "quit")


# --- memory snapshots ---------------------------------------------------------------
#
# Checked on QEMU 7.2 microvm: a snapshot is an outgoing migration into a file, and a
# restore is an incoming one. The file travels as a file descriptor, never as a shell
# command (`exec:cat ...`) or a path to quote: passed over the QMP socket (`getfd`, then
# the `fd:NAME` URI) to save; inherited by QEMU to restore, which waits (`-incoming
# defer`) until `migrate-incoming fd:N` names it. With the `events` capability QEMU
# reports the migration's progress as MIGRATION events, so neither side polls. The
# restored VM comes up paused (the source was stopped before saving) and needs `cont`.
#
# When guest RAM lives in a file (see `qemu_cmdline`), both sides set `x-ignore-shared`:
# the save then skips the shared RAM (the file already holds it) and writes only device
# state and ROMs (~70 KB instead of ~70 MB), and the load maps rather than reads it.

SNAPSHOT_FD_NAME = "boxui-snapshot"
_DONE = ("completed", "failed", "cancelled")


async def _migration_with_events(client: QMPClient, ram_in_file: bool) -> EventListener:
    caps = [{"capability": "events", "state": True}]
    if ram_in_file:
        caps.append({"capability": "x-ignore-shared", "state": True})
    await execute(client, "migrate-set-capabilities", {"capabilities": caps})
    listener = EventListener(("MIGRATION",))
    client.register_listener(listener)
    return listener


async def _send_fd(client: QMPClient, fd: int) -> None:
    client.send_fd_scm(fd)
    await execute(client, "getfd", {"fdname": SNAPSHOT_FD_NAME})


async def _wait_migration(client: QMPClient, listener: EventListener) -> dict[str, Any]:
    status = None
    try:
        async for event in listener:
            data = event.get("data")
            status = data.get("status") if isinstance(data, dict) else None
            if status in _DONE:
                break
    finally:
        client.remove_listener(listener)
    info = cast(dict[str, Any], await execute(client, "query-migrate"))
    if status != "completed":
        detail = info.get("error-desc") or status
        raise RuntimeError(f"migration {status}: {detail}")
    return info


async def save_snapshot_to(client: QMPClient, target: Path, *, ram_in_file: bool) -> int:
    """Pause the VM and write its state to `target` (and its RAM, unless `ram_in_file`);
    return the guest RAM written into `target`."""
    await execute(client, "stop")
    listener = await _migration_with_events(client, ram_in_file)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await _send_fd(client, fd)
    finally:
        os.close(fd)  # QEMU holds its own copy now
    await execute(client, "migrate", {"uri": f"fd:{SNAPSHOT_FD_NAME}"})
    info = await _wait_migration(client, listener)
    return int(info.get("ram", {}).get("total", 0))


async def load_snapshot_and_resume(client: QMPClient, fd_number: int, *,
                                   ram_in_file: bool) -> None:
    """Load the snapshot QEMU inherited as descriptor `fd_number` into a VM started with
    `-incoming defer`, then let it run."""
    listener = await _migration_with_events(client, ram_in_file)
    try:
        await execute(client, "migrate-incoming", {"uri": f"fd:{fd_number}"})
    except BaseException:
        client.remove_listener(listener)
        raise
    await _wait_migration(client, listener)
    status = await execute(client, "query-status")
    state = status.get("status") if isinstance(status, dict) else None
    if state != "paused":
        raise RuntimeError(f"snapshot loaded but the VM is {state}, not paused")
    await execute(client, "cont")


# --- port forwards on a running VM ---------------------------------------------------
#
# Checked on QEMU 7.2: user networking's forwards change through HMP (`hostfwd_add`,
# `hostfwd_remove`; QMP has no command of its own), carried by `human-monitor-command`.
# HMP answers in text: `hostfwd_add` prints nothing when it worked and "Could not set
# up host forwarding rule '...'" when the host port cannot be bound; `hostfwd_remove`
# prints "host forwarding rule for PROTO:ADDR:PORT removed" (or "not found").

#: the user-mode netdev's id on the command line (`-netdev user,id=n0`)
NETDEV_ID = "n0"


class ForwardRefused(Exception):
    """QEMU's own words for a forward it did not set up."""


async def hostfwd_add(client: QMPClient, protocol: str, host: int, guest: int) -> None:
    rule = f"{protocol}:127.0.0.1:{host}-:{guest}"
    answer = await execute(client, "human-monitor-command",
                           {"command-line": f"hostfwd_add {NETDEV_ID} {rule}"})
    text = str(answer or "").strip()
    if text:
        raise ForwardRefused(text)


async def hostfwd_remove(client: QMPClient, protocol: str, host: int) -> bool:
    """Whether QEMU had the forward (and now has not)."""
    rule = f"{protocol}:127.0.0.1:{host}"
    answer = await execute(client, "human-monitor-command",
                           {"command-line": f"hostfwd_remove {NETDEV_ID} {rule}"})
    text = str(answer or "").strip()
    if text.endswith("removed"):
        return True
    if text.endswith("not found"):
        return False
    raise ForwardRefused(text or "no answer")
