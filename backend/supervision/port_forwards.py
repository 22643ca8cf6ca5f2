"""Port forwards of one machine, changed while it runs and kept in its spec.

A running machine's forwards change through its hypervisor (QEMU's user network takes
`hostfwd_add`/`hostfwd_remove` over QMP), so nothing restarts. The spec (`ports` in
`machine.toml`) is what the next start forwards; the runtime record's `ports` is what
the running hypervisor forwards now. A re-adopted QEMU keeps the forwards it had, which
its record names.

A host port someone else holds is refused here before the hypervisor is asked, in one
line, and nothing changes; the hypervisor's own refusal (the port taken in between) is
reported the same way. Every change runs under the machine's lock, so no boot or stop
begins halfway through one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

from backend.drivers.base import VmHandle
from backend.drivers.errors import PortInUseError
from backend.errors import BoxuiError, MachineNotFoundError
from backend.state.events import SOURCE, CloudEvent, now_utc
from backend.state.lifecycle import ACTIVE_STATES
from backend.state.machine_spec import MAX_PORTS, MachineSpec
from backend.state.port_forward_view import ForwardView
from backend.state.port_mapping import PortMapping, Protocol, forward_key
from backend.state.runtime_record import RuntimeRecord
from backend.supervision.ports import pick_free_port, port_is_free
from backend.supervision.supervisor import MachineBusyError, Supervisor

PORT_TYPE_PREFIX = "dev.boxui.port.v1."
PORT_ADDED_TYPE = PORT_TYPE_PREFIX + "added"
PORT_REMOVED_TYPE = PORT_TYPE_PREFIX + "removed"


class NoSuchForwardError(BoxuiError):
    code = "no_such_forward"


class ForwardExistsError(BoxuiError):
    code = "forward_exists"


async def add_forward(sup: Supervisor, name: str, mapping: PortMapping) -> ForwardView:
    """Forward `mapping` on `name` now (if it runs) and at every start."""
    async with sup.machine_lock(name):
        spec, handle = await _spec_and_handle(sup, name)
        if any(m.key == mapping.key for m in spec.ports):
            raise ForwardExistsError(f"{name} already forwards guest port {mapping.key}; "
                                     f"`boxui port rm {name} {mapping.key}` first")
        if len(spec.ports) >= MAX_PORTS:
            raise ForwardExistsError(f"{name} has {MAX_PORTS} forwards, the most a machine "
                                     "can have")
        taken = await asyncio.to_thread(_ports_taken, sup, name, mapping.protocol)
        host = mapping.host
        if host is not None:
            _check_free(name, host, mapping.protocol, taken)
        elif handle is not None:
            host = pick_free_port(set(taken), mapping.protocol)
        if handle is not None and host is not None:
            await sup.driver.add_forward(handle, mapping.protocol, host, mapping.guest)
        try:
            spec.ports.append(mapping)
            await asyncio.to_thread(sup.engine.store.save_spec, spec)
            if handle is not None and host is not None:
                await sup.engine.update_record(name, _set_live(mapping.key, host))
        except BaseException:
            if handle is not None and host is not None:  # as it was, or as near as can be
                with contextlib.suppress(Exception):  # the first error is the one to tell
                    await sup.driver.remove_forward(handle, mapping.protocol, host)
            raise
        live = host if handle is not None else None
        view = ForwardView(guest=mapping.guest, protocol=mapping.protocol,
                           host=mapping.host, live_host=live)
        await sup.engine.record_event(_event(PORT_ADDED_TYPE, name, view, "added"))
        return view


async def remove_forward(sup: Supervisor, name: str, guest: int,
                         protocol: Protocol) -> ForwardView:
    """Stop forwarding `guest` on `name`, now and at its next starts."""
    key = forward_key(guest, protocol)
    async with sup.machine_lock(name):
        spec, handle = await _spec_and_handle(sup, name)
        machine = await asyncio.to_thread(sup.engine.machine, name)
        live = machine.record.ports.get(key) if handle is not None and machine.record else None
        mapping = next((m for m in spec.ports if m.key == key), None)
        if mapping is None and live is None:
            raise NoSuchForwardError(f"{name} does not forward guest port {key} "
                                     f"(see `boxui port ls {name}`)")
        if handle is not None and live is not None:
            await sup.driver.remove_forward(handle, protocol, live)
            await sup.engine.update_record(name, _drop_live(key))
        if mapping is not None:
            spec.ports.remove(mapping)
            await asyncio.to_thread(sup.engine.store.save_spec, spec)
        view = ForwardView(guest=guest, protocol=protocol,
                           host=mapping.host if mapping else None, live_host=live)
        await sup.engine.record_event(_event(PORT_REMOVED_TYPE, name, view, "removed"))
        return view


async def _spec_and_handle(sup: Supervisor, name: str) -> tuple[MachineSpec, VmHandle | None]:
    """The spec to change, and the running hypervisor to change with it (None: the
    machine does not run, and only the spec changes)."""
    state = sup.engine.projection.state_of(name)
    if state is None:
        raise MachineNotFoundError(name)
    spec = await asyncio.to_thread(sup.engine.store.load_spec, name)
    if state not in ACTIVE_STATES:
        return spec, None
    handle = sup.handles.get(name)
    if handle is None:
        raise MachineBusyError(f"{name} is {state.value} but boxui holds no process for "
                               "it; restart boxui to re-adopt it")
    return spec, handle


def _ports_taken(sup: Supervisor, name: str, protocol: Protocol) -> dict[int, str]:
    """Host ports of `protocol` other machines hold (running) or ask for (fixed in
    their spec), and this machine's own live ones, each with who has it."""
    taken: dict[int, str] = {}
    for machine in sup.engine.machines():
        running = machine.state in ACTIVE_STATES and machine.record is not None
        who = "its own" if machine.name == name else f"machine {machine.name}'s"
        if running and machine.record is not None:
            if machine.record.ssh_port is not None and protocol == "tcp":
                taken[machine.record.ssh_port] = f"{who} SSH forward"
            for key, host in machine.record.ports.items():
                if key.endswith("/udp") == (protocol == "udp"):
                    taken[host] = f"{who} forward of guest port {key}"
        for mapping in machine.spec.ports if machine.spec else []:
            if mapping.host is not None and mapping.protocol == protocol:
                taken.setdefault(mapping.host, f"{who} spec's forward of guest port "
                                 f"{mapping.key}")
    return taken


def _check_free(name: str, host: int, protocol: Protocol, taken: dict[int, str]) -> None:
    if host in taken:
        raise PortInUseError(f"host port 127.0.0.1:{host}/{protocol} is taken ({taken[host]}); "
                             f"{name}'s forwards are unchanged")
    if not port_is_free(host, protocol):
        raise PortInUseError(f"host port 127.0.0.1:{host}/{protocol} is in use by another "
                             f"program; {name}'s forwards are unchanged")


def _set_live(key: str, host: int) -> Callable[[RuntimeRecord], None]:
    def apply(record: RuntimeRecord) -> None:
        record.ports[key] = host

    return apply


def _drop_live(key: str) -> Callable[[RuntimeRecord], None]:
    def apply(record: RuntimeRecord) -> None:
        record.ports.pop(key, None)

    return apply


def _event(kind: str, name: str, view: ForwardView, verb: str) -> CloudEvent:
    where = f"127.0.0.1:{view.live_host}" if view.live_host is not None else (
        f"127.0.0.1:{view.host}" if view.host is not None else "a free host port")
    when = "" if view.live_host is not None else " (from its next start)"
    message = f"forward {where} -> guest {view.guest}/{view.protocol} {verb}{when}"
    return CloudEvent(id=str(uuid.uuid4()), source=SOURCE, type=kind, time=now_utc(),
                      subject=name, data={"machine": name, **view.model_dump(),
                                          "message": message})
