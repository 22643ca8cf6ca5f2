"""Host ports on 127.0.0.1 for a guest, and starting a hypervisor on one.

A port is picked free and bound by the hypervisor moments later, so another process can
take it in between. That race is lost rarely and never fatally: the driver reports it as
`PortInUseError`, and the start is retried on another port a few times before it fails.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from backend.drivers.base import HypervisorDriver, LaunchSpec, VmHandle
from backend.drivers.errors import DriverError, PortInUseError
from backend.state.port_mapping import Protocol

PORT_ATTEMPTS = 5


def pick_free_port(avoid: set[int] | None = None, protocol: Protocol = "tcp") -> int:
    """A port on 127.0.0.1 that is free now (see the module docstring for the race)."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not avoid or port not in avoid:
            return port
    raise DriverError("no free port on 127.0.0.1")


async def start_on_free_port(
    driver: HypervisorDriver,
    launch_on: Callable[[int], LaunchSpec],
    port: int,
    *,
    avoid: Callable[[], set[int]] = set,
    moved: Callable[[int], Awaitable[None]] | None = None,
    attempts: int = PORT_ATTEMPTS,
) -> VmHandle:
    """Start the hypervisor `launch_on(port)` describes. When the port was taken before
    the hypervisor bound it, pick another one (never one of `avoid()`), let `moved`
    record it wherever the old one was recorded, and try again; the last attempt's
    `PortInUseError` is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return await driver.start(launch_on(port))
        except PortInUseError:
            if attempt == attempts:
                raise
        port = pick_free_port(avoid() | {port})
        if moved is not None:
            await moved(port)
    raise ValueError(f"attempts must be at least 1, not {attempts}")


def port_is_free(port: int, protocol: Protocol = "tcp") -> bool:
    """Whether 127.0.0.1:`port` can be bound now, as the hypervisor will bind it."""
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            # as QEMU's own listening socket: a port left in TIME_WAIT is free to it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
