"""One libvirt daemon's domains as boxui machines: the class a host registry calls.

Every libvirt call runs on the libvirt thread (`loop_thread`); lifecycle events come from
`domainEventRegisterAny` and reach each subscriber's own loop; a lost connection is told
by libvirt's close callback and its keepalive, never found by polling. States follow
`states`. Domains without boxui's mark (`domain_xml.boxui_mark`) are foreign: shown,
started and stopped, but deleted only with `force`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import libvirt

from backend.drivers.base import LaunchSpec
from backend.drivers.errors import DriverError
from backend.drivers.libvirt.console import ConsoleReader, open_console
from backend.drivers.libvirt.domain_xml import BoxuiMark, boxui_mark, domain_xml
from backend.drivers.libvirt.loop_thread import on_libvirt
from backend.drivers.libvirt.states import (
    EVENT_DEFINED,
    EVENT_STARTED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    EVENT_UNDEFINED,
    MappedState,
    map_domain_state,
    map_event,
)
from backend.drivers.qemu.readiness import scan_console
from backend.state.lifecycle import InstanceState

#: keepalive: a silent daemon is declared lost after about interval * (count + 1) s
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 1, 2
_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
          | libvirt.VIR_DOMAIN_STATS_BALLOON)


class LibvirtHostError(DriverError):
    code = "libvirt"


def _fail(what: str, exc: libvirt.libvirtError) -> LibvirtHostError:
    message = exc.get_error_message() or str(exc)
    return LibvirtHostError(f"libvirt: {what}: {message}")


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    state: InstanceState
    reason: str
    mark: BoxuiMark | None
    vcpus: int | None = None
    memory_mib: int | None = None

    @property
    def boxui(self) -> bool:
        return self.mark is not None


@dataclass(frozen=True)
class DomainEvent:
    """A domain's new state; `state` None: it was undefined (is gone)."""

    name: str
    uuid: str
    state: InstanceState | None
    reason: str
    boxui: bool


@dataclass(frozen=True)
class HostLost:
    """The connection to the daemon closed (it died, or its host stopped answering)."""

    reason: str


LibvirtEvent = DomainEvent | HostLost


@dataclass(frozen=True)
class DomainHealth:
    name: str
    #: share of one core since the previous sample; None on the first
    cpu_percent: float | None
    memory_kib: int | None
    rss_kib: int | None


class LibvirtHost:
    """A libvirt URI (`qemu:///system`, `qemu+ssh://user@host/system`, ...), opened."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._marks: dict[str, BoxuiMark | None] = {}  # by uuid; libvirt thread only
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[LibvirtEvent]]] = []
        self._ready: set[str] = set()
        self._starting: set[str] = set()
        self._cpu: dict[str, tuple[int, float]] = {}

    async def __aenter__(self) -> LibvirtHost:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise LibvirtHostError(f"libvirt host {self.uri} is not open")
        return self._conn

    async def open(self) -> None:
        def connect() -> None:
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise _fail(f"cannot connect to {self.uri}", exc) from None
            with contextlib.suppress(libvirt.libvirtError):  # some drivers have none
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            conn.registerCloseCallback(self._on_close, None)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
            self._conn = conn

        await on_libvirt(connect)

    async def close(self) -> None:
        def disconnect() -> None:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            with contextlib.suppress(libvirt.libvirtError):
                if self._callback_id is not None:
                    conn.domainEventDeregisterAny(self._callback_id)
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        await on_libvirt(disconnect)

    # events ------------------------------------------------------------------------

    def _publish(self, event: LibvirtEvent) -> None:
        for loop, queue in list(self._subscribers):
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(queue.put_nowait, event)

    def _mark_of(self, dom: libvirt.virDomain) -> BoxuiMark | None:
        """Libvirt thread: boxui's mark of a domain, read once per uuid."""
        uuid = dom.UUIDString()
        if uuid not in self._marks:
            try:
                self._marks[uuid] = boxui_mark(dom.XMLDesc(0))
            except libvirt.libvirtError:
                return None
        return self._marks[uuid]

    def _on_lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                      detail: int, _opaque: object) -> None:
        name, uuid = dom.name(), dom.UUIDString()
        boxui = self._mark_of(dom) is not None
        if event in (EVENT_STARTED, EVENT_STOPPED, EVENT_UNDEFINED):
            self._ready.discard(name)
        mapped: MappedState | None
        if event == EVENT_UNDEFINED:
            self._marks.pop(uuid, None)
            mapped = None
        elif event == EVENT_DEFINED:  # added or redefined: its state did not change by it
            self._marks.pop(uuid, None)
            boxui = self._mark_of(dom) is not None
            mapped = self._mapped_now(dom, boxui)
        elif name in self._starting and event in (EVENT_STARTED, EVENT_SUSPENDED):
            mapped = MappedState(InstanceState.BOOTING, "")
        else:
            mapped = map_event(event, detail, boxui=boxui, ready_seen=name in self._ready)
        self._publish(DomainEvent(name, uuid, mapped.state if mapped else None,
                                  mapped.reason if mapped else "", boxui))

    def _on_close(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        reasons = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "closed"}
        self._publish(HostLost(f"connection to {self.uri} lost: "
                               f"{reasons.get(reason, str(reason))}"))

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[LibvirtEvent]]:
        """A queue of this host's events from now on, for as long as the block runs."""
        entry = (asyncio.get_running_loop(), asyncio.Queue[LibvirtEvent]())
        self._subscribers.append(entry)
        try:
            yield entry[1]
        finally:
            self._subscribers.remove(entry)

    # listing -----------------------------------------------------------------------

    def _mapped_now(self, dom: libvirt.virDomain, boxui: bool) -> MappedState:
        state, reason = dom.state()
        if dom.name() in self._starting:
            return MappedState(InstanceState.BOOTING, "")
        return map_domain_state(state, reason, boxui=boxui, ready_seen=dom.name() in self._ready)

    def _domain(self, dom: libvirt.virDomain) -> Domain:
        mark = self._mark_of(dom)
        mapped = self._mapped_now(dom, mark is not None)
        vcpus = memory_mib = None
        with contextlib.suppress(libvirt.libvirtError):  # [state, max KiB, KiB, vcpus, ns]
            info = dom.info()
            vcpus, memory_mib = int(info[3]), int(info[1]) // 1024
        return Domain(dom.name(), dom.UUIDString(), mapped.state, mapped.reason, mark,
                      vcpus, memory_mib)

    async def domains(self) -> list[Domain]:
        """Every domain, defined or only running, with its boxui state."""
        def collect() -> list[Domain]:
            try:
                return sorted((self._domain(d) for d in self.conn.listAllDomains(0)),
                              key=lambda d: d.name)
            except libvirt.libvirtError as exc:
                raise _fail("listing domains", exc) from None

        return await on_libvirt(collect)

    async def get(self, name: str) -> Domain:
        def one() -> Domain:
            return self._domain(self._lookup(name))

        return await on_libvirt(one)

    def _lookup(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise LibvirtHostError(f"no domain {name!r} on {self.uri}") from None
            raise _fail(f"looking up {name}", exc) from None

    async def _call(self, what: str, name: str, method: str, *args: int) -> None:
        def run() -> None:
            dom = self._lookup(name)
            try:
                getattr(dom, method)(*args)
            except libvirt.libvirtError as exc:
                raise _fail(f"{what} {name}", exc) from None

        await on_libvirt(run)

    # lifecycle ---------------------------------------------------------------------

    async def create(self, spec: LaunchSpec) -> Domain:
        """Define `spec` as a domain marked as boxui's (not started)."""
        xml = domain_xml(spec, str(uuidlib.uuid4()))

        def define() -> Domain:
            with contextlib.suppress(LibvirtHostError):
                self._lookup(spec.name)
                raise LibvirtHostError(f"a domain named {spec.name!r} exists on {self.uri}")
            try:
                dom = self.conn.defineXML(xml)
            except libvirt.libvirtError as exc:
                raise _fail(f"defining {spec.name}", exc) from None
            return self._domain(dom)

        return await on_libvirt(define)

    async def redefine(self, spec: LaunchSpec, uuid: str) -> Domain:
        """Define `spec` over the stopped boxui domain `uuid`: what its next boot is (a
        new boot id, SSH port, initrd). The mark is read again, not taken from the cache
        (libvirt's defined event may come after this call's caller starts the domain)."""
        xml = domain_xml(spec, uuid)

        def define() -> Domain:
            try:
                dom = self.conn.defineXML(xml)
            except libvirt.libvirtError as exc:
                raise _fail(f"defining {spec.name}", exc) from None
            self._marks.pop(dom.UUIDString(), None)
            return self._domain(dom)

        return await on_libvirt(define)

    async def start(self, name: str, ready_timeout: float | None = None) -> float | None:
        """Start a domain. With `ready_timeout`, a boxui domain is started paused, its
        console attached, then resumed, and this returns once the guest prints its ready
        marker: the seconds from resume to ready. A boot that fails or times out is
        destroyed, as the local driver kills one: nothing is left half-started."""
        domain = await self.get(name)
        if domain.mark is None or ready_timeout is None:
            await self._call("starting", name, "create")
            return None
        self._starting.add(name)
        try:
            elapsed = await self._boot_to_ready(name, domain.mark.boot_id, ready_timeout)
        except BaseException:
            with contextlib.suppress(LibvirtHostError):
                await self._call("destroying", name, "destroy")
            raise
        finally:
            self._starting.discard(name)
        self._ready.add(name)
        self._publish(DomainEvent(name, domain.uuid, InstanceState.READY, "", True))
        return elapsed

    async def _boot_to_ready(self, name: str, boot_id: str, timeout: float) -> float:
        await self._call("starting", name, "createWithFlags", libvirt.VIR_DOMAIN_START_PAUSED)
        try:
            console = await open_console(self.conn, await on_libvirt(self._lookup, name))
        except libvirt.libvirtError as exc:
            raise _fail(f"attaching the console of {name}", exc) from None
        try:
            began = time.monotonic()
            await self._call("resuming", name, "resume")
            self._starting.discard(name)
            try:
                ok = await console.wait_for(lambda line: scan_console(line, boot_id), timeout)
            except TimeoutError:
                raise LibvirtHostError(f"{name}: guest not ready after {timeout:g} s") from None
            if not ok:
                raise LibvirtHostError(f"{name}: guest failed to boot; see its console")
            return time.monotonic() - began
        finally:
            await console.close()

    async def stop(self, name: str, timeout: float = 30.0) -> bool:
        """ACPI shutdown, then destroy once `timeout` passes; True if the guest shut down
        by itself. Waits for libvirt's stopped event, not for a polled state."""
        domain = await self.get(name)
        if domain.state in (InstanceState.STOPPED, InstanceState.CRASHED,
                            InstanceState.FAILED):
            return True
        async with self.subscribe() as events:
            await self._call("shutting down", name, "shutdownFlags",
                             libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while True:
                        event = await events.get()
                        if (isinstance(event, DomainEvent) and event.name == name
                                and event.state in (None, InstanceState.STOPPED,
                                                    InstanceState.CRASHED,
                                                    InstanceState.FAILED)):
                            return True
        with contextlib.suppress(LibvirtHostError):  # it may have stopped meanwhile
            await self._call("destroying", name, "destroy")
        return False

    async def destroy(self, name: str) -> None:
        """Power a running domain off at once (virsh destroy); a stopped one is left."""
        if (await self.get(name)).state not in (InstanceState.STOPPED, InstanceState.CRASHED,
                                                 InstanceState.FAILED):
            await self._call("destroying", name, "destroy")

    async def restart(self, name: str, timeout: float = 30.0,
                      ready_timeout: float | None = None) -> float | None:
        await self.stop(name, timeout)
        return await self.start(name, ready_timeout)

    async def delete(self, name: str, force: bool = False) -> None:
        """Undefine a domain (destroying it first if it runs); a foreign one only with
        `force`."""
        domain = await self.get(name)
        if domain.mark is None and not force:
            raise LibvirtHostError(
                f"{name} was not created by boxui; delete it with --force")

        def remove() -> None:
            dom = self._lookup(name)
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError as exc:
                raise _fail(f"deleting {name}", exc) from None

        await on_libvirt(remove)

    async def console(self, name: str) -> ConsoleReader:
        """The running domain's serial console from now on (closes any other reader)."""
        dom = await on_libvirt(self._lookup, name)
        try:
            return await open_console(self.conn, dom)
        except libvirt.libvirtError as exc:
            raise _fail(f"opening the console of {name}", exc) from None

    async def health(self) -> list[DomainHealth]:
        """CPU and memory of every running domain, from one `getAllDomainStats` call."""
        def sample() -> list[tuple[str, dict[str, int]]]:
            try:
                stats = self.conn.getAllDomainStats(
                    _STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            except libvirt.libvirtError as exc:
                raise _fail("reading domain stats", exc) from None
            return [(dom.name(), values) for dom, values in stats]

        now = time.monotonic()
        found: list[DomainHealth] = []
        for name, values in await on_libvirt(sample):
            cpu_ns = values.get("cpu.time")
            percent = None
            if cpu_ns is not None:
                before = self._cpu.get(name)
                if before is not None and now > before[1]:
                    percent = max(0.0, (cpu_ns - before[0]) / 1e9 / (now - before[1]) * 100)
                self._cpu[name] = (cpu_ns, now)
            found.append(DomainHealth(name, percent, values.get("balloon.current"),
                                      values.get("balloon.rss")))
        return found
