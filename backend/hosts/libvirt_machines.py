"""boxui machines on a libvirt host: what `create/start/stop/restart/rm/ls/info/exec
--host LIBVIRTHOST` do.

Why a command talks to libvirt itself, as virsh does, with no boxui daemon in between:
on a libvirt host, libvirtd is the supervisor. It owns the QEMU processes, keeps them
through its own restarts and tells every client of their lifecycle. A boxui daemon in
front of it would be a second supervisor of processes it cannot own, whose view could
only lag libvirt's, and one more thing to start and keep alive. So a command opens one
libvirt connection for as long as it runs, acts and closes it; what it waits for (a guest
ready, a domain stopped) it is told by libvirt's events and the console stream.

What libvirt does not keep is kept here, per host, under the state dir
(`hosts/<host>/<machine>/`, see `machine_dir`): the machine's spec (`machine.toml`), its
SSH keys, the domain's uuid, SSH port and boot id (`libvirt.json`), the initrd carrying
its keys and a fresh RNG seed, and the console log virtlogd writes. The initrd is
written again before every start by boxui, so no two boots share a seed; later commands
find the keys there for `exec` and `ssh`.

On a local daemon (`qemu:///system`) the domain names those files by their paths here.
Through any URI with a host part the daemon may not see them, so they are uploaded over
the same connection into boxui's storage pool there (`uploads_files`, `_placed`): the
kernel once per host (named by its content), the initrd per boot, and the console log
is a file of that pool too, read back through libvirt to tell `ready`. The guest's SSH
and port forwards listen on that host's 127.0.0.1, so exec and ssh reach a guest only
where that is this machine's too (a loopback URI).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from backend.drivers.base import LaunchSpec
from backend.drivers.libvirt.host import Domain, LibvirtHost, LibvirtHostError
from backend.drivers.libvirt.volumes import Volumes, content_name
from backend.drivers.qemu.accel import resolve_accel
from backend.errors import BoxuiError
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import READY_MARKER
from backend.guest.image_builder import GuestImage, build_default_image, load_current_image
from backend.guest.machine_seed import MachineKeys, create_machine_keys, write_machine_initrd
from backend.hosts.registry import HostDef
from backend.state.accelerator import Accel
from backend.state.atomic_write import atomic_write_text
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec, read_spec, write_spec
from backend.state.state_dir import StateDir

#: a q35 guest with PCI devices boots slower than a microvm, and a libvirt host may be
#: busier than this one
BOOT_TIMEOUT = 300.0
RECORD_FILE = "libvirt.json"
SPEC_FILE = "machine.toml"
CONSOLE_FILE = "console.log"
RUNNING = frozenset({InstanceState.BOOTING, InstanceState.READY, InstanceState.BUSY,
                     InstanceState.UNRESPONSIVE, InstanceState.STOPPING})
#: a machine's own volumes in boxui's pool on a host it uploads to: NAME + these
INITRD_VOLUME, CONSOLE_VOLUME = ".initrd", ".console.log"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})


class LibvirtMachineError(BoxuiError):
    code = "libvirt"


class DomainRecord(BaseModel):
    """What boxui knows of the domain it defined for a machine (`libvirt.json`)."""

    model_config = ConfigDict(extra="forbid")

    uri: str
    uuid: str
    ssh_port: int
    boot_id: str
    accel: Accel
    #: guest port (`80`, `53/udp`) -> host port, for this boot
    ports: dict[str, int] = {}


@dataclass(frozen=True)
class LocalMachine:
    directory: Path
    spec: MachineSpec
    record: DomainRecord

    @property
    def console_log(self) -> Path:
        return self.directory / CONSOLE_FILE


@dataclass(frozen=True)
class MachineView:
    """One domain of the host as a command shows it; `local`: boxui's record of it."""

    host: str
    domain: Domain
    local: LocalMachine | None
    state: InstanceState

    @property
    def name(self) -> str:
        return self.domain.name

    @property
    def ssh_port(self) -> int | None:
        return self.domain.mark.ssh_port if self.domain.mark else None

    def as_json(self) -> dict[str, object]:
        local = self.local
        return {
            "name": self.name, "state": self.state.value, "reason": self.domain.reason,
            "needs_recovery": False, "host": self.host, "uuid": self.domain.uuid,
            "boxui": self.domain.boxui, "vcpus": self.domain.vcpus,
            "memory_mib": self.domain.memory_mib,
            "spec": local.spec.model_dump(mode="json") if local else None,
            "record": local.record.model_dump(mode="json") | {
                "ssh_port": self.ssh_port} if local else None,
            "dir": str(local.directory) if local else None,
        }


def host_dir(dirs: StateDir, host: HostDef) -> Path:
    return dirs.root / "hosts" / host.name


def machine_dir(dirs: StateDir, host: HostDef, name: str) -> Path:
    return host_dir(dirs, host) / name


def load_local(dirs: StateDir, host: HostDef, name: str) -> LocalMachine | None:
    """boxui's record of `name` on `host`; None when it has none (a foreign domain, or
    one another state dir made). A record that cannot be read is one line, kept."""
    directory = machine_dir(dirs, host, name)
    record_path = directory / RECORD_FILE
    if not record_path.exists():
        return None
    try:
        record = DomainRecord.model_validate_json(record_path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise LibvirtMachineError(f"{record_path} cannot be read: "
                                  f"{str(exc).splitlines()[0]}") from None
    return LocalMachine(directory, read_spec(directory / SPEC_FILE), record)


def write_record(directory: Path, record: DomainRecord) -> None:
    atomic_write_text(directory / RECORD_FILE, record.model_dump_json(indent=2) + "\n",
                      mode=0o600)


def is_loopback(uri: str) -> bool:
    """Whether a libvirt URI reaches a daemon on this machine (so it sees our files)."""
    try:
        where = urlsplit(uri).hostname
    except ValueError:
        return False
    return not where or where in _LOOPBACK or where in (socket.gethostname(),
                                                        socket.getfqdn())


def uploads_files(uri: str) -> bool:
    """Whether a boxui domain's boot files are uploaded to the host (`volumes`) rather
    than named by their paths here: for any URI with a host part, loopback included
    (the daemon an SSH URI reaches may see another filesystem: a container, a
    namespace). Only a transport-less URI (`qemu:///system`) is this machine's daemon."""
    try:
        return bool(urlsplit(uri).hostname)
    except ValueError:
        return True


def _scan(text: str, boot_id: str) -> bool:
    return any(line.split()[:2] == [READY_MARKER, boot_id] for line in text.splitlines())


async def console_text(lv: LibvirtHost, path: str) -> bytes:
    """The console log a domain's serial device writes, wherever it is: a file here
    when the daemon shares this machine's files, else a volume of boxui's pool there
    (its end). Empty when there is none yet."""
    if is_loopback(lv.uri):
        with contextlib.suppress(OSError):  # not here: a volume there, or none yet
            return await asyncio.to_thread(Path(path).read_bytes)
    if not uploads_files(lv.uri):
        return b""
    return await Volumes(lv).tail(path) or b""


async def seen_ready(lv: LibvirtHost, domain: Domain) -> bool:
    """Whether a boxui domain libvirt shows booting has printed this boot's ready
    marker: how a process that did not boot it (a later command, the app) tells
    `ready`, since libvirt knows nothing of the guest inside."""
    mark = domain.mark
    if domain.state is not InstanceState.BOOTING or mark is None or not mark.console_log:
        return False
    text = await console_text(lv, mark.console_log)
    return _scan(text.decode(errors="replace"), mark.boot_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def default_image(dirs: StateDir) -> GuestImage:
    """The default guest image the local driver boots, built first if there is none."""
    image = await asyncio.to_thread(load_current_image, dirs.images)
    try:
        return image if image is not None else await build_default_image(dirs.images)
    except GuestImageError as exc:
        raise LibvirtMachineError(str(exc)) from None


class LibvirtMachines:
    """The machines of one libvirt host, over one connection (`async with`)."""

    def __init__(self, dirs: StateDir, host: HostDef, lv: LibvirtHost | None = None) -> None:
        """`lv`: a connection the caller has open and keeps (the app's), used as it is
        (no `async with`)."""
        self.dirs = dirs
        self.host = host
        self.lv = lv if lv is not None else LibvirtHost(host.address)

    async def __aenter__(self) -> LibvirtMachines:
        await self.lv.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.lv.close()

    # reading -------------------------------------------------------------------------

    async def _view(self, domain: Domain) -> MachineView:
        local = load_local(self.dirs, self.host, domain.name) if domain.boxui else None
        state = InstanceState.READY if await seen_ready(self.lv, domain) else domain.state
        return MachineView(self.host.name, domain, local, state)

    async def console_text(self, path: str) -> bytes:
        return await console_text(self.lv, path)

    async def every(self) -> list[MachineView]:
        return [await self._view(domain) for domain in await self.lv.domains()]

    async def view(self, name: str) -> MachineView:
        try:
            return await self._view(await self.lv.get(name))
        except LibvirtHostError as exc:
            if str(exc).startswith("no domain"):
                raise LibvirtMachineError(
                    f"no machine {name!r} on host {self.host.name} (boxui ls --host "
                    f"{self.host.name} lists them)") from None
            raise

    # lifecycle -----------------------------------------------------------------------

    async def create(self, spec: MachineSpec, *, start: bool) -> MachineView:
        """Define a domain for `spec` (its record written first, taken back if libvirt
        refuses), then boot it to ready unless `start` is False."""
        try:
            await self.view(spec.name)
        except LibvirtMachineError:
            pass  # no such domain: the name is free
        else:
            raise LibvirtMachineError(f"{spec.name} exists on host {self.host.name}")
        directory = machine_dir(self.dirs, self.host, spec.name)
        # a record with no domain is what a create cut short leaves: replaced
        await asyncio.to_thread(shutil.rmtree, directory, True)
        image = await default_image(self.dirs)
        await asyncio.to_thread(_make_dir, directory)
        try:
            await asyncio.to_thread(write_spec, directory / SPEC_FILE, spec)
            keys = await asyncio.to_thread(create_machine_keys, directory)
            launch = await self._placed(
                await self.next_launch(spec, directory, image, keys, {}, None))
            domain = await self.lv.create(launch)
            await asyncio.to_thread(write_record, directory, _record(
                self.host, domain.uuid, launch))
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        return await self.start(spec.name) if start else await self._view(domain)

    async def next_launch(self, spec: MachineSpec, directory: Path, image: GuestImage,
                      keys: MachineKeys, last_ports: dict[str, int],
                      last_ssh: int | None) -> LaunchSpec:
        """One boot's launch: fresh seed in the initrd, new boot id, free ports."""
        initrd = await asyncio.to_thread(write_machine_initrd, image, directory, keys,
                                         spec.env)
        choice = resolve_accel(spec.accel)
        forwards: list[tuple[int, int, str]] = []
        for mapping in spec.ports:
            kept = last_ports.get(mapping.key)
            host_port = mapping.host or (kept if kept and port_free(kept) else free_port())
            forwards.append((host_port, mapping.guest, mapping.protocol))
        return LaunchSpec(
            name=spec.name, vcpus=spec.vcpus, memory_mib=spec.memory_mib,
            kernel=image.kernel, initrd=initrd, append=spec.cmdline, accel=choice.accel,
            ssh_port=last_ssh if last_ssh and port_free(last_ssh) else free_port(),
            boot_id=uuidlib.uuid4().hex[:16], machine_dir=directory, run_dir=directory,
            console_log=directory / CONSOLE_FILE, tsc_khz=choice.tsc_khz,
            port_forwards=tuple((h, g) for h, g, p in forwards if p == "tcp"),
            udp_forwards=tuple((h, g) for h, g, p in forwards if p == "udp"))

    async def _placed(self, launch: LaunchSpec) -> LaunchSpec:
        """The launch as the host sees it: on a host that does not share this machine's
        files, its kernel (once per host), this boot's initrd and its console log are
        volumes of boxui's pool there (`backend.drivers.libvirt.volumes`)."""
        if not uploads_files(self.host.address):
            return launch
        volumes = Volumes(self.lv)
        kernel_name = await asyncio.to_thread(content_name, launch.kernel, "kernel")
        kernel = await volumes.put_once(launch.kernel, kernel_name)
        initrd = await volumes.put(launch.initrd, f"{launch.name}{INITRD_VOLUME}")
        console = PurePosixPath(initrd).parent / f"{launch.name}{CONSOLE_VOLUME}"
        return dataclasses.replace(launch, kernel=Path(kernel), initrd=Path(initrd),
                                   console_log=Path(console))

    async def start(self, name: str) -> MachineView:
        """Boot to ready. A boxui machine of this state dir gets a new seed, boot id and
        (if its last was taken) SSH port first; any other domain is started as it is."""
        view = await self.view(name)
        if view.state in RUNNING:
            return view  # as a local start of a running machine: nothing to do
        if view.local is None:
            await self.lv.start(name, BOOT_TIMEOUT if view.domain.boxui else None)
            return await self.view(name)
        local = view.local
        image = await default_image(self.dirs)
        keys = await asyncio.to_thread(create_machine_keys, local.directory)
        launch = await self._placed(await self.next_launch(
            local.spec, local.directory, image, keys, local.record.ports,
            local.record.ssh_port))
        await self.lv.redefine(launch, local.record.uuid)
        await asyncio.to_thread(write_record, local.directory,
                                _record(self.host, local.record.uuid, launch))
        await self.lv.start(name, BOOT_TIMEOUT)
        return await self.view(name)

    async def stop(self, name: str, *, force: bool) -> tuple[MachineView, str | None]:
        """Power off: ACPI, then destroy after the machine's `acpi_timeout`; `force`:
        destroy at once. With how it ended, when it ran."""
        view = await self.view(name)
        if view.state not in RUNNING:
            return view, None
        if force:
            await self.lv.destroy(name)
            return await self.view(name), "destroyed (--force)"
        timeout = view.local.spec.stop.acpi_timeout if view.local else 30.0
        clean = await self.lv.stop(name, timeout)
        how = "powered off (ACPI)" if clean else \
            f"destroyed after ACPI timeout ({timeout:g} s)"
        return await self.view(name), how

    async def restart(self, name: str) -> MachineView:
        await self.stop(name, force=False)
        return await self.start(name)

    async def delete(self, name: str, *, force: bool) -> None:
        """Undefine the domain and forget boxui's record. A running machine, or a domain
        boxui did not create, only with `force`."""
        view = await self.view(name)
        if not view.domain.boxui and not force:
            raise LibvirtMachineError(
                f"{name} on host {self.host.name} was not created by boxui: it is deleted "
                "only with --force")
        if view.state in RUNNING and not force:
            raise LibvirtMachineError(
                f"{name} is {view.state.value} on host {self.host.name}: stop it first, "
                "or rm --force")
        await self.lv.delete(name, force=force)
        if view.domain.boxui and uploads_files(self.host.address):
            await Volumes(self.lv).remove(f"{name}{INITRD_VOLUME}", f"{name}{CONSOLE_VOLUME}")
        await asyncio.to_thread(shutil.rmtree, machine_dir(self.dirs, self.host, name), True)

    async def login(self, name: str) -> tuple[LocalMachine, int]:
        """The machine's record and SSH port, for exec and ssh: it must be boxui's, made
        here, and ready."""
        view = await self.view(name)
        where = f"host {self.host.name}"
        if not view.domain.boxui:
            raise LibvirtMachineError(f"{name} on {where} was not created by boxui: there "
                                      "is no key to log in with (virsh console reaches it)")
        if view.local is None or view.ssh_port is None:
            raise LibvirtMachineError(f"{name} on {where} was made by another boxui state "
                                      "dir: its keys are not here")
        if view.state is not InstanceState.READY:
            hint = "" if view.state in RUNNING else \
                f" (boxui start --host {self.host.name} {name})"
            raise LibvirtMachineError(f"{name} is {view.state.value} on {where}{hint}")
        return view.local, view.ssh_port


def _make_dir(directory: Path) -> None:
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.mkdir(directory, 0o700)


def _record(host: HostDef, uuid: str, launch: LaunchSpec) -> DomainRecord:
    ports = {str(guest): host_port for host_port, guest in launch.port_forwards}
    ports |= {f"{guest}/udp": host_port for host_port, guest in launch.udp_forwards}
    return DomainRecord(uri=host.address, uuid=uuid, ssh_port=launch.ssh_port,
                        boot_id=launch.boot_id, accel=launch.accel, ports=ports)
