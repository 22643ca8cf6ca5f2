"""A boxui machine as a libvirt domain definition, and boxui's mark in a domain's XML.

Choices worth knowing:
- libvirt refuses `-M microvm`, so the domain is `q35` with virtio-pci devices; the
  default guest loads virtio_pci for them (`backend.guest.guest_files.MODULES`).
- Networking is QEMU's user-mode netdev with `hostfwd`, as on the local QEMU driver,
  passed through libvirt's `qemu:commandline`: libvirt's own `<interface type='user'>`
  forwards ports only with passt, which Debian 12's libvirt host need not have. libvirt
  then marks the domain tainted (custom-argv); that is what a `hostfwd` costs.
- The serial console is a pty (so `virDomainOpenConsole` reads it, locally or over
  `qemu+ssh://`) whose output virtlogd also writes to the machine's console log,
  from scratch at each start.
- `on_reboot`/`on_crash` destroy: as `-no-reboot` does locally, a reboot or a panic
  (`panic=-1`) ends the domain, so boxui is told by a lifecycle event.
- boxui's metadata (its own XML namespace) marks a domain boxui created: only those may
  be deleted without force.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from backend.drivers.base import LaunchSpec
from backend.drivers.errors import DriverError
from backend.drivers.qemu.cmdline import NAME_PATTERN, kernel_cmdline_for, tb_size_mib

BOXUI_NS = "https://boxui.dev/xmlns/libvirt/machine/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
MACHINE_TYPE = "q35"
#: the NIC libvirt does not know of: a fixed slot on the root bus, far above the slots
#: libvirt hands its own few devices (it counts up from 1 and would give this one's away)
NIC_DEVICE = "virtio-net-pci,netdev=n0,id=net0,bus=pcie.0,addr=0x10"

ET.register_namespace("boxui", BOXUI_NS)
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class BoxuiMark:
    """What boxui wrote into a domain it created."""

    name: str
    boot_id: str
    ssh_port: int
    #: where virtlogd writes its console (on the libvirt host), from its serial device
    console_log: str | None = None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _netdev(spec: LaunchSpec) -> str:
    fwd = [f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"]
    fwd += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in spec.port_forwards]
    fwd += [f"hostfwd=udp:127.0.0.1:{host}-:{guest}" for host, guest in spec.udp_forwards]
    return ",".join(["user", "id=n0", *fwd])


def _validate(spec: LaunchSpec) -> None:
    if not NAME_PATTERN.fullmatch(spec.name):
        raise DriverError(f"invalid machine name {spec.name!r} for a libvirt domain")
    if spec.accel not in ("kvm", "tcg"):
        raise DriverError(f"a libvirt domain cannot run under accel {spec.accel!r}")
    if spec.restore_from is not None or spec.ram_file is not None or spec.mounts:
        raise DriverError(f"{spec.name}: snapshots and shared folders are not supported "
                          "on a libvirt host")
    if not 1 <= spec.ssh_port <= 65535:
        raise DriverError(f"invalid ssh port {spec.ssh_port}")


def _os(domain: ET.Element, spec: LaunchSpec) -> None:
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=MACHINE_TYPE)
    _sub(os_el, "kernel", str(spec.kernel))
    _sub(os_el, "initrd", str(spec.initrd))
    cmdline = spec.kernel_cmdline or kernel_cmdline_for(
        spec.name, spec.boot_id, spec.accel, spec.tsc_khz, spec.append)
    if any(ch in cmdline for ch in "\n\r\0"):
        raise DriverError("kernel command line must be one line")
    _sub(os_el, "cmdline", cmdline)


def _devices(domain: ET.Element, spec: LaunchSpec) -> None:
    devices = _sub(domain, "devices")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    # started afresh by every boot: a boot id virsh starts again must not find its last
    # boot's ready marker there (how another process tells ready)
    _sub(serial, "log", file=str(spec.console_log), append="off")
    _sub(_sub(devices, "console", type="pty"), "target", type="serial", port="0")
    if spec.disk_image is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        fmt = "qcow2" if spec.disk_image.suffix == ".qcow2" else "raw"
        _sub(disk, "driver", name="qemu", type=fmt, cache="writeback")
        _sub(disk, "source", file=str(spec.disk_image))
        _sub(disk, "target", dev="vda", bus="virtio")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="virtio")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(_sub(devices, "video"), "model", type="none")


def domain_xml(spec: LaunchSpec, uuid: str) -> str:
    """The domain definition of one boxui machine (`virDomainDefineXML`'s input)."""
    _validate(spec)
    domain = ET.Element("domain", type="kvm" if spec.accel == "kvm" else "qemu")
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", uuid)
    mark = _sub(_sub(domain, "metadata"), f"{{{BOXUI_NS}}}machine")
    _sub(mark, f"{{{BOXUI_NS}}}name", spec.name)
    _sub(mark, f"{{{BOXUI_NS}}}boot-id", spec.boot_id)
    _sub(mark, f"{{{BOXUI_NS}}}ssh-port", str(spec.ssh_port))
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus))
    _os(domain, spec)
    features = _sub(domain, "features")
    _sub(features, "acpi")
    if spec.accel == "tcg":  # the same capped translation buffer as the QEMU driver's
        buffer_mib = tb_size_mib(spec.kernel, spec.memory_mib)
        _sub(_sub(features, "tcg"), "tb-cache", str(buffer_mib), unit="MiB")
    if spec.accel == "kvm":
        _sub(domain, "cpu", mode="host-passthrough")
    for event in ("on_reboot", "on_crash"):
        _sub(domain, event, "destroy")
    _devices(domain, spec)
    extra = _sub(domain, f"{{{QEMU_NS}}}commandline")
    for arg in ("-netdev", _netdev(spec), "-device", NIC_DEVICE):
        _sub(extra, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(domain, encoding="unicode")


def boxui_mark(xml: str) -> BoxuiMark | None:
    """boxui's metadata in a domain's XML; None for a domain boxui did not create."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    mark = root.find(f"metadata/{{{BOXUI_NS}}}machine")
    if mark is None:
        return None
    name = mark.findtext(f"{{{BOXUI_NS}}}name")
    boot_id = mark.findtext(f"{{{BOXUI_NS}}}boot-id")
    port = mark.findtext(f"{{{BOXUI_NS}}}ssh-port")
    if not name or not boot_id or not port or not port.isdigit():
        return None
    log = root.find("devices/serial/log")
    return BoxuiMark(name, boot_id, int(port), log.get("file") if log is not None else None)
