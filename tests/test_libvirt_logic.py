"""The libvirt driver's pure parts, without a libvirt daemon: states, events, domain XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from backend.drivers.base import LaunchSpec
from backend.drivers.errors import DriverError
from backend.drivers.libvirt import states
from backend.drivers.libvirt.domain_xml import BOXUI_NS, QEMU_NS, boxui_mark, domain_xml
from backend.drivers.libvirt.states import map_domain_state, map_event
from backend.guest.guest_files import MODULES
from backend.state.lifecycle import InstanceState as S
from backend.state.mount_spec import parse_mount

UUID = "6f1c1f2e-5c36-4a51-9d7e-3a8e1f0f9b10"


def launch(**kw: object) -> LaunchSpec:
    fields: dict[str, object] = dict(
        name="web-1", vcpus=2, memory_mib=256, kernel=Path("/img/vmlinuz"),
        initrd=Path("/m/web-1/initrd"), append="", accel="tcg", ssh_port=42022,
        boot_id="b00t", machine_dir=Path("/m/web-1"), run_dir=Path("/r/web-1"),
        console_log=Path("/m/web-1/console.log"))
    fields.update(kw)
    return LaunchSpec(**fields)  # type: ignore[arg-type]


def test_enum_values_are_libvirts() -> None:
    libvirt = pytest.importorskip("libvirt")
    assert (states.RUNNING, states.PAUSED, states.SHUTOFF, states.CRASHED) == (
        libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF,
        libvirt.VIR_DOMAIN_CRASHED)
    assert states.SHUTOFF_CRASHED == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
    assert states.SHUTOFF_FAILED == libvirt.VIR_DOMAIN_SHUTOFF_FAILED
    assert states.PAUSED_STARTING_UP == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP
    assert (states.EVENT_UNDEFINED, states.EVENT_STOPPED, states.EVENT_CRASHED) == (
        libvirt.VIR_DOMAIN_EVENT_UNDEFINED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
        libvirt.VIR_DOMAIN_EVENT_CRASHED)
    assert states.STOPPED_CRASHED == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED
    assert states.STOPPED_FAILED == libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED


@pytest.mark.parametrize(("state", "reason", "boxui", "ready", "expected"), [
    (states.RUNNING, 1, True, False, S.BOOTING),
    (states.RUNNING, 1, True, True, S.READY),
    (states.RUNNING, 1, False, False, S.READY),
    (states.BLOCKED, 0, True, True, S.READY),
    (states.PAUSED, states.PAUSED_STARTING_UP, True, False, S.BOOTING),
    (states.PAUSED, 1, False, False, S.UNRESPONSIVE),
    (states.SHUTDOWN, 1, True, True, S.STOPPING),
    (states.SHUTOFF, 1, True, False, S.STOPPED),
    (states.SHUTOFF, states.SHUTOFF_CRASHED, True, False, S.CRASHED),
    (states.SHUTOFF, states.SHUTOFF_FAILED, False, False, S.FAILED),
    (states.CRASHED, 0, False, False, S.CRASHED),
    (states.PMSUSPENDED, 0, False, False, S.UNRESPONSIVE),
    (states.NOSTATE, 0, False, False, S.FAILED),
])  # fmt: skip
def test_domain_states_map_to_boxui_states(state: int, reason: int, boxui: bool, ready: bool,
                                           expected: S) -> None:
    assert map_domain_state(state, reason, boxui=boxui, ready_seen=ready).state is expected


def test_a_foreign_running_domain_says_libvirt_is_the_source() -> None:
    mapped = map_domain_state(states.RUNNING, 1, boxui=False, ready_seen=False)
    assert "libvirt" in mapped.reason


@pytest.mark.parametrize(("event", "detail", "expected"), [
    (states.EVENT_STARTED, 0, S.BOOTING),
    (states.EVENT_SUSPENDED, 0, S.UNRESPONSIVE),
    (states.EVENT_SHUTDOWN, 0, S.STOPPING),
    (states.EVENT_STOPPED, 0, S.STOPPED),
    (states.EVENT_STOPPED, 1, S.STOPPED),
    (states.EVENT_STOPPED, states.STOPPED_CRASHED, S.CRASHED),
    (states.EVENT_STOPPED, states.STOPPED_FAILED, S.FAILED),
    (states.EVENT_CRASHED, 0, S.CRASHED),
])  # fmt: skip
def test_events_map_to_boxui_states(event: int, detail: int, expected: S) -> None:
    mapped = map_event(event, detail, boxui=True, ready_seen=False)
    assert mapped is not None and mapped.state is expected


def test_undefined_means_gone() -> None:
    assert map_event(states.EVENT_UNDEFINED, 0, boxui=True, ready_seen=False) is None


def test_domain_xml_is_a_q35_boxui_machine() -> None:
    root = ET.fromstring(domain_xml(launch(port_forwards=((8080, 80),)), UUID))
    assert root.get("type") == "qemu"  # TCG
    assert root.findtext("name") == "web-1" and root.findtext("uuid") == UUID
    assert root.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert root.findtext("os/kernel") == "/img/vmlinuz"
    cmdline = root.findtext("os/cmdline") or ""
    assert "boxui.name=web-1" in cmdline and "boxui.boot_id=b00t" in cmdline
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "256"  # type: ignore[union-attr]
    assert root.findtext("on_reboot") == "destroy" and root.findtext("on_crash") == "destroy"
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:42022-:22" in (netdev or "")
    assert "hostfwd=tcp:127.0.0.1:8080-:80" in (netdev or "")
    assert any(a and a.startswith("virtio-net-pci,netdev=n0,") for a in args)
    assert root.find("devices/serial/log").get("file") == "/m/web-1/console.log"  # type: ignore[union-attr]
    assert root.find("features/tcg/tb-cache") is not None


def test_kvm_domains_pass_the_host_cpu_and_have_no_tcg_cache() -> None:
    root = ET.fromstring(domain_xml(launch(accel="kvm"), UUID))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert root.find("features/tcg") is None


def test_a_disk_is_virtio_vda() -> None:
    root = ET.fromstring(domain_xml(launch(disk_image=Path("/m/web-1/disk.qcow2")), UUID))
    disk = root.find("devices/disk")
    assert disk is not None
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]


def test_values_are_escaped_not_interpreted(tmp_path: Path) -> None:
    odd = tmp_path / "a&b<c>'\""
    root = ET.fromstring(domain_xml(launch(kernel=odd), UUID))
    assert root.findtext("os/kernel") == str(odd)


@pytest.mark.parametrize("kw", [
    {"name": "Bad Name"}, {"accel": "demo"}, {"ssh_port": 0},
    {"append": "a\nb"}, {"restore_from": Path("/x")},
])  # fmt: skip
def test_launches_libvirt_cannot_take_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(DriverError):
        domain_xml(launch(**kw), UUID)


def test_shared_folders_are_refused() -> None:
    with pytest.raises(DriverError, match="shared folders"):
        domain_xml(launch(mounts=(parse_mount("/srv"),)), UUID)


def test_the_mark_round_trips_and_foreign_domains_have_none() -> None:
    mark = boxui_mark(domain_xml(launch(), UUID))
    assert mark is not None and (mark.name, mark.boot_id, mark.ssh_port) == (
        "web-1", "b00t", 42022)
    assert boxui_mark("<domain type='kvm'><name>theirs</name></domain>") is None
    assert boxui_mark("<domain><metadata><other xmlns='urn:x'/></metadata></domain>") is None
    assert boxui_mark("not xml") is None
    broken = f"<domain><metadata><m:machine xmlns:m='{BOXUI_NS}'><m:name>x</m:name>" \
             "</m:machine></metadata></domain>"
    assert boxui_mark(broken) is None


def test_the_default_guest_loads_virtio_pci_after_its_dependencies() -> None:
    names = [name for name, _ in MODULES]
    assert names.index("virtio_pci") > max(names.index("virtio_pci_modern_dev"),
                                          names.index("virtio_pci_legacy_dev"),
                                          names.index("virtio_ring"), names.index("virtio"))


def test_tcg_domains_size_the_buffer_as_the_qemu_driver_does() -> None:
    for kernel, buffer_mib in (("/img/vmlinux-boxui", "16"), ("/img/vmlinuz", "64")):
        root = ET.fromstring(domain_xml(launch(kernel=Path(kernel)), UUID))
        assert root.findtext("features/tcg/tb-cache") == buffer_mib
