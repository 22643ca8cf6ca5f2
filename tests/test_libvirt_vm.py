"""The libvirt driver against a real libvirtd (private, started here) and real guests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("libvirt")  # before the driver's imports: without it, nothing here runs

from backend.drivers.libvirt.host import (
    DomainEvent,
    HostLost,
    LibvirtEvent,
    LibvirtHost,
    LibvirtHostError,
)
from backend.state.lifecycle import InstanceState as S
from tests.daemon_helpers import boxui
from tests.libvirt_helpers import (
    LibvirtDaemon,
    default_guest_launch,
    guest_exec,
    running_libvirtd,
    sshd_into,
)

pytestmark = pytest.mark.vm

IMAGE_CACHE = Path(os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache"))
BOOT_TIMEOUT = 300.0  # TCG under a loaded 2-core host


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[LibvirtDaemon]:
    with running_libvirtd() as daemon:
        yield daemon


async def _next_state(events: asyncio.Queue[LibvirtEvent], name: str, wanted: S | None,
                      timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            event = await events.get()
            if isinstance(event, DomainEvent) and event.name == name and event.state is wanted:
                return


FOREIGN_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"""


async def test_a_boxui_guest_boots_on_libvirt_runs_an_exec_and_stops(
        libvirtd: LibvirtDaemon, tmp_path: Path) -> None:
    guest = await default_guest_launch(tmp_path / "m", "lv-guest", IMAGE_CACHE)
    async with LibvirtHost(libvirtd.uri) as host:
        created = await host.create(guest.spec)
        assert created.boxui and created.state is S.STOPPED
        async with host.subscribe() as events:
            elapsed = await host.start("lv-guest", ready_timeout=BOOT_TIMEOUT)
            assert elapsed is not None
            await _next_state(events, "lv-guest", S.BOOTING)  # told by libvirt's event
            await _next_state(events, "lv-guest", S.READY)
            assert (await host.get("lv-guest")).state is S.READY
            assert (await guest_exec(guest, "hostname")).strip() == "lv-guest"
            # a module under Debian's kernel, built into boxui's: registered either way
            assert "virtio-pci" in await guest_exec(guest, "ls /sys/bus/pci/drivers")
            (health,) = [h for h in await host.health() if h.name == "lv-guest"]
            assert health.memory_kib and health.memory_kib > 0
            assert "BOXUI-READY" in guest.spec.console_log.read_text(errors="replace")
            assert await host.restart("lv-guest", 60, ready_timeout=BOOT_TIMEOUT)
            await _next_state(events, "lv-guest", S.STOPPED)
            await _next_state(events, "lv-guest", S.READY)
            assert (await guest_exec(guest, "echo again")).strip() == "again"
            assert await host.stop("lv-guest", timeout=60) is True  # ACPI was enough
            await _next_state(events, "lv-guest", S.STOPPED)
        assert (await host.get("lv-guest")).state is S.STOPPED
        await host.delete("lv-guest")
        assert "lv-guest" not in [d.name for d in await host.domains()]


async def test_a_foreign_domain_is_listed_started_stopped_and_kept(
        libvirtd: LibvirtDaemon) -> None:
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    conn.defineXML(FOREIGN_XML.format(name="theirs"))
    conn.close()
    async with LibvirtHost(libvirtd.uri) as host:
        (theirs,) = [d for d in await host.domains() if d.name == "theirs"]
        assert not theirs.boxui and theirs.state is S.STOPPED
        async with host.subscribe() as events:
            await host.start("theirs")
            await _next_state(events, "theirs", S.READY)  # libvirt's running, as told
            # nothing in it answers ACPI: destroyed after the timeout
            assert await host.stop("theirs", timeout=1) is False
            await _next_state(events, "theirs", S.STOPPED)
        with pytest.raises(LibvirtHostError, match=r"not created by boxui.*--force"):
            await host.delete("theirs")
        assert "theirs" in [d.name for d in await host.domains()]
        await host.delete("theirs", force=True)
        assert "theirs" not in [d.name for d in await host.domains()]


async def test_the_same_daemon_answers_over_qemu_ssh(libvirtd: LibvirtDaemon) -> None:
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    conn.defineXML(FOREIGN_XML.format(name="over-ssh"))
    conn.close()
    with sshd_into(libvirtd) as ssh:
        async with LibvirtHost(ssh.uri()) as host:
            assert "over-ssh" in [d.name for d in await host.domains()]
            async with host.subscribe() as events:
                await host.start("over-ssh")
                await _next_state(events, "over-ssh", S.READY)
                await host.stop("over-ssh", timeout=1)
                await _next_state(events, "over-ssh", S.STOPPED)
            await host.delete("over-ssh", force=True)


def test_boxui_host_ls_shows_a_libvirt_hosts_domains(libvirtd: LibvirtDaemon,
                                                     tmp_path: Path) -> None:
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    conn.defineXML(FOREIGN_XML.format(name="listed"))
    conn.close()
    try:
        home = tmp_path / "home"
        assert boxui(home, "host", "add", "lv", "--libvirt", libvirtd.uri).returncode == 0
        out = boxui(home, "host", "ls", "--json")
        assert out.returncode == 0, out.stderr
        (lv,) = [h for h in json.loads(out.stdout) if h["name"] == "lv"]
        assert lv["reachable"] is True, lv
        assert lv["facts"]["domains"] >= 1 and lv["facts"]["states"].get("stopped", 0) >= 1
    finally:
        conn = libvirt.open(libvirtd.uri)
        conn.lookupByName("listed").undefine()
        conn.close()


def test_a_machine_made_through_the_cli_boots_runs_an_exec_and_is_removed(
        libvirtd: LibvirtDaemon, vm_home: Path) -> None:
    home, record = vm_home, vm_home / "hosts" / "lv" / "lvc"
    assert boxui(home, "host", "add", "lv", "--libvirt", libvirtd.uri).returncode == 0
    made = boxui(home, "create", "lvc", "--host", "lv", timeout=BOOT_TIMEOUT + 120)
    assert re.fullmatch(r"lvc: ready, ssh on 127\.0\.0\.1:\d+\n", made.stdout), made.stderr
    first = json.loads((record / "libvirt.json").read_text())
    seed = (record / "initrd.img").read_bytes()
    hello = boxui(home, "exec", "--host", "lv", "lvc", "--", "hostname")
    assert (hello.returncode, hello.stdout) == (0, "lvc\n"), hello.stderr
    failing = boxui(home, "exec", "--host", "lv", "lvc", "--", "sh", "-c", "exit 3")
    assert failing.returncode == 3, failing.stderr
    session = boxui(home, "ssh", "--host", "lv", "lvc", "echo", "via-ssh")
    assert session.stdout == "via-ssh\n", session.stderr
    # a later process, which did not see the boot, tells ready by the console log
    info = json.loads(boxui(home, "info", "lvc", "--host", "lv", "--json").stdout)
    assert (info["state"], info["boxui"]) == ("ready", True), info
    with sshd_into(libvirtd) as ssh:  # the same daemon over loopback qemu+ssh
        assert boxui(home, "host", "add", "lvs", "--libvirt", ssh.uri()).returncode == 0
        listed = json.loads(boxui(home, "ls", "--host", "lvs", "--json").stdout)
        assert [m["state"] for m in listed if m["name"] == "lvc"] == ["ready"], listed
    refused = boxui(home, "rm", "lvc", "--host", "lv")
    assert refused.returncode == 1 and "stop it first" in refused.stderr, refused.stderr
    stopped = boxui(home, "stop", "--host", "lv", "lvc", timeout=120)
    assert stopped.stdout == "lvc: stopped: powered off (ACPI)\n", stopped.stderr
    again = boxui(home, "start", "lvc", "--host", "lv", timeout=BOOT_TIMEOUT + 60)
    assert again.stdout.startswith("lvc: ready, ssh on 127.0.0.1:"), again.stderr
    second = json.loads((record / "libvirt.json").read_text())
    assert second["boot_id"] != first["boot_id"] and second["uuid"] == first["uuid"]
    assert (record / "initrd.img").read_bytes() != seed  # a new RNG seed for this boot
    echo = boxui(home, "exec", "--host", "lv", "lvc", "--", "echo", "again")
    assert echo.stdout == "again\n", echo.stderr
    gone = boxui(home, "rm", "lvc", "--force", "--host", "lv", timeout=120)
    assert (gone.returncode, gone.stdout) == (0, "deleted lvc\n"), gone.stderr
    assert not record.exists()
    assert "lvc" not in json.dumps(json.loads(boxui(home, "ls", "--host", "lv", "--json").stdout))


async def test_an_unreachable_uri_is_one_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    with pytest.raises(LibvirtHostError, match=r"^libvirt: cannot connect to .*"):
        await LibvirtHost(f"qemu:///system?socket={tmp_path}/none").open()


async def test_a_daemon_that_goes_away_is_told_not_found_by_polling() -> None:
    with running_libvirtd() as daemon:
        host = LibvirtHost(daemon.uri)
        await host.open()
        try:
            async with host.subscribe() as events:
                os.kill(daemon.pid, signal.SIGTERM)  # libvirtd stops; its socket closes
                async with asyncio.timeout(10):
                    while not isinstance(event := await events.get(), HostLost):
                        pass
            assert daemon.uri in event.reason
        finally:
            await host.close()


async def test_a_boot_that_misses_its_deadline_is_destroyed(
        libvirtd: LibvirtDaemon, tmp_path: Path) -> None:
    guest = await default_guest_launch(tmp_path / "m", "lv-late", IMAGE_CACHE)
    async with LibvirtHost(libvirtd.uri) as host:
        await host.create(guest.spec)
        # a deadline no boot can meet: boxui's kernel reaches ready within 1 s on an
        # idle host, even under TCG
        with pytest.raises(LibvirtHostError, match=r"not ready after 0\.01 s"):
            await host.start("lv-late", ready_timeout=0.01)
        assert (await host.get("lv-late")).state is S.STOPPED
        await host.delete("lv-late")


def _domain_files(daemon: LibvirtDaemon, name: str) -> tuple[str, str, str]:
    """The kernel, initrd and console log paths the domain's definition names."""
    import xml.etree.ElementTree as ET

    import libvirt

    conn = libvirt.open(daemon.uri)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()
    log = root.find("devices/serial/log")
    assert log is not None
    return root.findtext("os/kernel") or "", root.findtext("os/initrd") or "", \
        log.get("file") or ""


def test_a_machine_on_a_far_libvirt_host_boots_from_uploaded_files(
        libvirtd: LibvirtDaemon, vm_home: Path) -> None:
    """Through `qemu+ssh://` the daemon is treated as another machine's: the kernel, the
    initrd and the console log are volumes of boxui's pool there, uploaded over the
    libvirt connection (the pool's directory exists only inside libvirtd's namespace,
    so nothing of this machine's files could have been booted)."""
    home, pool = vm_home, libvirtd.root / "lib" / "boxui"  # /var/lib/libvirt/boxui there
    with sshd_into(libvirtd) as ssh:
        assert boxui(home, "host", "add", "far", "--libvirt", ssh.uri()).returncode == 0
        made = boxui(home, "create", "lvu", "--host", "far", timeout=BOOT_TIMEOUT + 120)
        assert re.fullmatch(r"lvu: ready, ssh on 127\.0\.0\.1:\d+\n", made.stdout), made.stderr
        kernel, initrd, log = _domain_files(libvirtd, "lvu")
        assert (Path(kernel).parent, Path(initrd).name, Path(log).name) == (
            Path("/var/lib/libvirt/boxui"), "lvu.initrd", "lvu.console.log")
        assert re.fullmatch(r"kernel-[0-9a-f]{32}", Path(kernel).name), kernel
        here = vm_home / "hosts" / "far" / "lvu"
        assert (pool / "lvu.initrd").read_bytes() == (here / "initrd.img").read_bytes()
        kept = (pool / Path(kernel).name).stat()
        # a later process tells ready by the console log read back through libvirt
        hello = boxui(home, "exec", "--host", "far", "lvu", "--", "hostname")
        assert (hello.returncode, hello.stdout) == (0, "lvu\n"), hello.stderr
        logs = boxui(home, "logs", "--host", "far", "lvu")
        assert "BOXUI-READY" in logs.stdout, logs.stderr
        # a second machine reuses the kernel already there: only its initrd goes up
        other = boxui(home, "create", "lvu2", "--no-start", "--host", "far")
        assert other.returncode == 0, other.stderr
        assert _domain_files(libvirtd, "lvu2")[0] == kernel
        again = (pool / Path(kernel).name).stat()
        assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
        stopped = boxui(home, "stop", "--host", "far", "lvu", timeout=120)
        assert stopped.stdout == "lvu: stopped: powered off (ACPI)\n", stopped.stderr
        for name in ("lvu", "lvu2"):
            gone = boxui(home, "rm", name, "--host", "far", timeout=60)
            assert gone.returncode == 0, gone.stderr
        left = sorted(p.name for p in pool.iterdir())
        assert left == [Path(kernel).name], left  # machines' files gone; the kernel kept
