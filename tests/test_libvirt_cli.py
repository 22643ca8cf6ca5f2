"""The machine commands on a libvirt host, without booting a guest.

What such a host cannot do is refused in one line before anything is written or any
connection made; the per-host records are checked against a private libvirtd started
here (root; `tests/libvirt_helpers.py`), which defines domains and boots none.
`test_libvirt_vm.py` boots a guest through the same commands.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")  # before the driver's imports: without it, nothing here runs

from backend.guest.image_builder import load_current_image
from backend.hosts.libvirt_machines import (
    LibvirtMachines,
    is_loopback,
    load_local,
    uploads_files,
)
from backend.hosts.registry import HostDef
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import open_state_dir
from tests.daemon_helpers import boxui
from tests.libvirt_helpers import LibvirtDaemon, running_libvirtd, sshd_into
from tests.templates.helpers import fake_base_image

FOREIGN_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"""


def one_line_error(out: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("boxui: "), out.stderr
    for part in parts:
        assert part in out.stderr, out.stderr


@pytest.fixture
def lv_home(tmp_path: Path) -> Path:
    """A state dir whose default guest image is files that boot nothing (no build)."""
    home = tmp_path / "home"
    fake_base_image(open_state_dir(home))
    return home


def test_what_a_libvirt_host_cannot_do_is_one_line(lv_home: Path) -> None:
    # nothing answers at this URI: every refusal comes before a connection is tried
    uri = f"qemu:///system?socket={lv_home}/no-such-libvirtd"
    assert boxui(lv_home, "host", "add", "lv", "--libvirt", uri).returncode == 0
    refused = {
        ("create", "vm", "--host", "lv", "--template", "web"): "--template",
        ("create", "vm", "--host", "lv", "--mount", str(lv_home)): "--mount",
        ("create", "vm", "--host", "lv", "--restart", "always"): "--restart",
        ("create", "vm", "--host", "lv", "--image", "debian-12"): "--image",
        ("create", "vm", "--host", "lv", "--autostart"): "--autostart",
        ("exec", "--host", "lv", "--idempotent", "vm", "--", "true"): "--idempotent",
        ("events", "--host", "lv"): "events",
        ("logs", "--host", "lv", "-f", "vm"): "--follow",
        ("port", "ls", "vm", "--host", "lv"): "port ls",
        ("port", "add", "vm", "8080", "--host", "lv"): "port add",
        ("image", "ls", "--host", "lv"): "image ls",
        ("service", "ls", "--host", "lv"): "service ls",
        ("daemon", "status", "--host", "lv"): "daemon status",
    }
    for args, what in refused.items():
        one_line_error(boxui(lv_home, *args), "boxui: lv is a libvirt host: ", what)
    assert not (lv_home / "hosts").exists()  # nothing written for any of them
    down = boxui(lv_home, "ls", "--host", "lv")
    one_line_error(down, "cannot connect to")


def test_which_uris_get_the_boot_files_uploaded() -> None:
    far = "qemu+ssh://root@192.0.2.7/system"
    assert uploads_files(far) and not is_loopback(far)
    loop = "qemu+ssh://root@127.0.0.1:2222/system"  # maybe another filesystem: uploaded
    assert uploads_files(loop) and is_loopback(loop)
    for local in ("qemu:///system", "qemu:///system?socket=/tmp/lv/sock", "qemu:///session"):
        assert not uploads_files(local) and is_loopback(local)


async def test_every_launch_has_a_new_seed_and_boot_id(tmp_path: Path) -> None:
    dirs = open_state_dir(tmp_path / "home")
    fake_base_image(dirs)
    image = load_current_image(dirs.images)
    assert image is not None
    host = HostDef(name="lv", kind="libvirt", address="qemu:///system")
    machines = LibvirtMachines(dirs, host)  # never opened: a launch asks libvirt nothing
    directory = tmp_path / "m"
    directory.mkdir()
    from backend.guest.machine_seed import create_machine_keys

    keys = create_machine_keys(directory)
    spec = MachineSpec(name="vm")
    first = await machines.next_launch(spec, directory, image, keys, {}, None)
    seed_one = first.initrd.read_bytes()
    second = await machines.next_launch(spec, directory, image, keys, {}, first.ssh_port)
    assert second.initrd == first.initrd and second.initrd.read_bytes() != seed_one
    assert second.boot_id != first.boot_id
    assert second.ssh_port == first.ssh_port  # kept while it is free


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[LibvirtDaemon]:
    with running_libvirtd() as daemon:
        yield daemon


def test_records_per_host_and_what_is_refused_on_a_real_libvirtd(
        libvirtd: LibvirtDaemon, lv_home: Path) -> None:
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    conn.defineXML(FOREIGN_XML.format(name="theirs"))
    try:
        assert boxui(lv_home, "host", "add", "lv", "--libvirt", libvirtd.uri).returncode == 0
        made = boxui(lv_home, "create", "vm", "--host", "lv", "--no-start", "--vcpus", "2")
        assert (made.returncode, made.stdout) == (0, "vm: stopped\n"), made.stderr
        record = lv_home / "hosts" / "lv" / "vm"
        for name in ("machine.toml", "libvirt.json", "id_ed25519", "initrd.img"):
            assert (record / name).is_file(), name
        saved = json.loads((record / "libvirt.json").read_text())
        dom = conn.lookupByName("vm")
        assert saved["uuid"] == dom.UUIDString() and saved["uri"] == libvirtd.uri
        xml = dom.XMLDesc(0)
        assert str(record / "initrd.img") in xml and saved["boot_id"] in xml
        assert not (lv_home / "machines" / "vm").exists()  # nothing of it is a local machine
        listed = json.loads(boxui(lv_home, "ls", "--host", "lv", "--json").stdout)
        by_name = {m["name"]: m for m in listed}
        assert by_name["vm"]["boxui"] and by_name["vm"]["vcpus"] == 2
        assert by_name["vm"]["state"] == "stopped" and by_name["vm"]["host"] == "lv"
        assert not by_name["theirs"]["boxui"] and by_name["theirs"]["spec"] is None
        table = boxui(lv_home, "ls", "--host", "lv").stdout
        assert "not created by boxui" in table and "vm" in table, table
        info = boxui(lv_home, "info", "vm", "--host", "lv").stdout
        assert "boxui's:        yes" in info and str(record) in info, info
        one_line_error(boxui(lv_home, "create", "vm", "--host", "lv", "--no-start"), "exists")
        one_line_error(boxui(lv_home, "rm", "theirs", "--host", "lv"),
                       "not created by boxui", "--force")
        one_line_error(boxui(lv_home, "exec", "--host", "lv", "theirs", "--", "true"),
                       "not created by boxui")
        one_line_error(boxui(lv_home, "exec", "--host", "lv", "vm", "--", "true"),
                       "vm is stopped on host lv", "boxui start --host lv vm")
        one_line_error(boxui(lv_home, "info", "nope", "--host", "lv"), "no machine 'nope'")
        assert conn.lookupByName("theirs")  # still there
        gone = boxui(lv_home, "rm", "vm", "--host", "lv")
        assert (gone.returncode, gone.stdout) == (0, "deleted vm\n"), gone.stderr
        assert not record.exists() and "vm" not in conn.listDefinedDomains()
        assert boxui(lv_home, "rm", "theirs", "--force", "--host", "lv").returncode == 0
        assert "theirs" not in conn.listDefinedDomains()
    finally:
        for name in ("vm", "theirs"):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).undefine()
        conn.close()


def test_a_record_of_another_state_dir_is_not_ours(libvirtd: LibvirtDaemon,
                                                     lv_home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    fake_base_image(open_state_dir(other))
    for where in (lv_home, other):
        assert boxui(where, "host", "add", "lv", "--libvirt", libvirtd.uri).returncode == 0
    assert boxui(other, "create", "shared", "--host", "lv", "--no-start").returncode == 0
    try:
        listed = json.loads(boxui(lv_home, "ls", "--host", "lv", "--json").stdout)
        (shared,) = [m for m in listed if m["name"] == "shared"]
        assert shared["boxui"] and shared["record"] is None  # boxui's, not this dir's
        assert load_local(open_state_dir(lv_home), HostDef(
            name="lv", kind="libvirt", address=libvirtd.uri), "shared") is None
        one_line_error(boxui(lv_home, "exec", "--host", "lv", "shared", "--", "true"),
                       "another boxui state dir")
    finally:
        assert boxui(other, "rm", "shared", "--host", "lv").returncode == 0


def test_boot_files_go_up_through_the_connection_once(libvirtd: LibvirtDaemon,
                                                        lv_home: Path) -> None:
    """Through `qemu+ssh://`, a machine's domain names volumes of boxui's pool there:
    the kernel by its content (a second machine finds it), its initrd by its name;
    `rm` takes the machine's away and keeps the kernel. Nothing boots."""
    import libvirt

    pool = libvirtd.root / "lib" / "boxui"  # /var/lib/libvirt/boxui inside its namespace
    with sshd_into(libvirtd) as ssh:
        assert boxui(lv_home, "host", "add", "far", "--libvirt", ssh.uri()).returncode == 0
        for name in ("up1", "up2"):
            made = boxui(lv_home, "create", name, "--host", "far", "--no-start")
            assert (made.returncode, made.stdout) == (0, f"{name}: stopped\n"), made.stderr
        conn = libvirt.open(libvirtd.uri)
        try:
            xml = conn.lookupByName("up1").XMLDesc(0)
            assert conn.storagePoolLookupByName("boxui").isActive()
        finally:
            conn.close()
        image = load_current_image(open_state_dir(lv_home).images)
        assert image is not None
        (kernel,) = [p for p in pool.iterdir() if p.name.startswith("kernel-")]
        assert kernel.read_bytes() == image.kernel.read_bytes()
        assert f"<kernel>/var/lib/libvirt/boxui/{kernel.name}</kernel>" in xml, xml
        assert "<initrd>/var/lib/libvirt/boxui/up1.initrd</initrd>" in xml, xml
        assert "/var/lib/libvirt/boxui/up1.console.log" in xml, xml
        record = lv_home / "hosts" / "far" / "up1"
        assert (pool / "up1.initrd").read_bytes() == (record / "initrd.img").read_bytes()
        assert not [p for p in pool.iterdir() if ".part-" in p.name]
        for name in ("up1", "up2"):
            assert boxui(lv_home, "rm", name, "--host", "far").returncode == 0
        assert [p.name for p in pool.iterdir()] == [kernel.name]
