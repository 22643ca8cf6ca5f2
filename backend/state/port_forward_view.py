"""What a machine forwards: its spec's ports, and the host ports its running hypervisor
holds now. Read by the API and by `boxui port ls` (which reads the state dir alone)."""

from __future__ import annotations

from pydantic import BaseModel

from backend.state.lifecycle import ACTIVE_STATES
from backend.state.machine_store import LoadedMachine
from backend.state.port_mapping import Protocol


class ForwardView(BaseModel):
    """One forward: `host` as the spec asks (None: picked at each start), `live_host`
    the host port the running machine forwards now (None while it is not running)."""

    guest: int
    protocol: Protocol
    host: int | None
    live_host: int | None


def forward_views(machine: LoadedMachine) -> list[ForwardView]:
    """The spec's forwards, with what the running hypervisor forwards now; a live one the
    spec no longer names (edited by hand) is listed too, until the machine stops."""
    running = machine.state in ACTIVE_STATES and machine.record is not None
    live = dict(machine.record.ports) if running and machine.record else {}
    views = []
    for mapping in machine.spec.ports if machine.spec else []:
        views.append(ForwardView(guest=mapping.guest, protocol=mapping.protocol,
                                 host=mapping.host, live_host=live.pop(mapping.key, None)))
    for key, host in live.items():
        guest, _, proto = key.partition("/")
        views.append(ForwardView(guest=int(guest), protocol="udp" if proto == "udp" else "tcp",
                                 host=None, live_host=host))
    return views
