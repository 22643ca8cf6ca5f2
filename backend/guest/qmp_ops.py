"""The few QMP operations boxui needs, with the facts checked on QEMU 7.2 microvm.

- Balloon statistics: the virtio balloon only reports after the host sets
  `guest-stats-polling-interval` (seconds) on the device; `guest-stats` then returns
  `{"stats": {...}, "last-update": <unix time>}` with `last-update` 0 until the guest
  driver has answered once. The device is at `BALLOON_QOM_PATH` because the command
  line gives it a fixed id.
- Graceful stop: `system_powerdown` = ACPI power button; the guest powers off and QEMU
  exits by itself (no `quit` needed).
"""

from __future__ import annotations

from typing import Any, cast

from qemu.qmp import QMPClient

from backend.guest.qemu_cmdline import BALLOON_QOM_PATH


async def enable_balloon_stats(client: QMPClient, interval_s: int = 2) -> None:
    """Ask the guest's balloon driver to report memory stats every `interval_s` seconds."""
    await client.execute(
        "qom-set",
        {"path": BALLOON_QOM_PATH, "property": "guest-stats-polling-interval", "value": interval_s},
    )


async def read_balloon_stats(client: QMPClient) -> dict[str, Any]:
    """The latest `guest-stats` (`stats` maps e.g. `stat-free-memory` to bytes)."""
    result = await client.execute("qom-get", {"path": BALLOON_QOM_PATH, "property": "guest-stats"})
    return cast(dict[str, Any], result)


async def request_powerdown(client: QMPClient) -> None:
    """Press the (ACPI) power button; the guest shuts down cleanly and QEMU exits."""
    await client.execute("system_powerdown")
