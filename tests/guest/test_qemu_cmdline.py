"""The QEMU argv: a list, every value one argument, the machine named, nothing joinable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from backend.drivers.qemu.cmdline import (
    BALLOON_QOM_PATH,
    SMALL_KERNEL_TB_SIZE_MIB,
    TCG_TB_SIZE_MIB,
    QemuConfig,
    build_argv,
    kernel_append,
)
from backend.guest.errors import GuestImageError
from backend.guest.image_builder import GUEST_KERNEL_FILE


def config(tmp_path: Path, **changes: object) -> QemuConfig:
    base = QemuConfig(
        name="web-1",
        vcpus=2,
        memory_mib=512,
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd.img",
        accel="tcg",
        ssh_port=42022,
        console_log=tmp_path / "console.log",
        qmp_socket=tmp_path / "qmp.sock",
        pidfile=tmp_path / "qemu.pid",
        boot_id="b00t1d",
        tsc_khz=2445404,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def value_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_argv_is_a_list_of_single_arguments(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path), "/usr/bin/qemu-system-x86_64")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    # options are separate elements, never "flag value" glued into one string
    assert value_after(argv, "-M") == ["microvm,acpi=on"]
    assert not any(a.startswith("-") and " " in a for a in argv)
    assert not any(c in a for a in argv for c in (";", "|", "&&", "`", "$("))


def test_hostfwd_uses_the_port_on_loopback_only(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, ssh_port=40123))
    (netdev,) = value_after(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:40123-:22" in netdev.split(",")


def test_machine_is_named_for_the_supervisor(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path))
    assert value_after(argv, "-name") == ["boxui-web-1,process=boxui-web-1"]


def test_append_carries_identity_console_and_tsc(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, append="loglevel=7"))
    (append,) = value_after(argv, "-append")
    words = append.split()
    for word in ("console=ttyS0", "quiet", "panic=-1", "boxui.name=web-1", "boxui.boot_id=b00t1d",
                 "tsc_early_khz=2445404", "tsc=reliable"):  # fmt: skip
        assert word in words
    assert words[-1] == "loglevel=7"  # user extras come last so they win


def test_tcg_caps_its_translation_buffer(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path))
    assert value_after(argv, "-accel") == [f"tcg,tb-size={TCG_TB_SIZE_MIB}"]
    assert 16 <= TCG_TB_SIZE_MIB <= 256  # a MiB figure, not bytes or a default of 0


@pytest.mark.parametrize(("memory_mib", "buffer_mib"), [
    (64, SMALL_KERNEL_TB_SIZE_MIB), (256, 16), (512, 32), (1024, 64), (8192, 64)])
def test_boxuis_kernel_gets_a_buffer_sized_to_its_ram(tmp_path: Path, memory_mib: int,
                                                      buffer_mib: int) -> None:
    small = build_argv(config(tmp_path, kernel=tmp_path / GUEST_KERNEL_FILE,
                              memory_mib=memory_mib))
    assert value_after(small, "-accel") == [f"tcg,tb-size={buffer_mib}"]
    assert 16 <= SMALL_KERNEL_TB_SIZE_MIB < TCG_TB_SIZE_MIB
    # Debian's kernel keeps its own, whatever the size: its boot alone fills ~52 MiB
    other = build_argv(config(tmp_path, memory_mib=memory_mib))
    assert value_after(other, "-accel") == [f"tcg,tb-size={TCG_TB_SIZE_MIB}"]


def test_boxuis_kernel_under_kvm_has_no_buffer(tmp_path: Path) -> None:
    kvm = build_argv(config(tmp_path, kernel=tmp_path / GUEST_KERNEL_FILE, accel="kvm"))
    assert value_after(kvm, "-accel") == ["kvm"]  # no buffer to size under KVM


def test_kvm_gets_host_cpu_and_no_tsc_hint(tmp_path: Path) -> None:
    cfg = config(tmp_path, accel="kvm")
    argv = build_argv(cfg)
    assert value_after(argv, "-accel") == ["kvm"] and value_after(argv, "-cpu") == ["host"]
    assert "tsc_early_khz" not in kernel_append(cfg)


def test_required_devices_and_plumbing(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    argv = build_argv(cfg)
    devices = value_after(argv, "-device")
    assert "virtio-net-device,netdev=n0,id=net0" in devices
    assert any(d.startswith(f"virtio-balloon-device,id={BALLOON_QOM_PATH.rsplit('/', 1)[1]}")
               for d in devices)
    assert any(d.startswith("virtio-rng-device") for d in devices)
    assert value_after(argv, "-qmp") == [f"unix:{cfg.qmp_socket},server=on,wait=off"]
    assert value_after(argv, "-pidfile") == [str(cfg.pidfile)]
    assert value_after(argv, "-chardev") == [f"file,id=con0,path={cfg.console_log},append=on"]
    for flag in ("-nodefaults", "-no-user-config", "-daemonize", "-no-reboot"):
        assert flag in argv
    assert value_after(argv, "-display") == ["none"]
    assert value_after(argv, "-m") == ["512"] and value_after(argv, "-smp") == ["2"]
    assert "-incoming" not in argv


def test_incoming_and_foreground(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, incoming=True, daemonize=False))
    assert value_after(argv, "-incoming") == ["defer"]  # the snapshot is named over QMP
    assert "-daemonize" not in argv


def test_guest_ram_in_a_file_backs_the_machine_memory(tmp_path: Path) -> None:
    plain = build_argv(config(tmp_path))
    assert value_after(plain, "-M") == ["microvm,acpi=on"] and "-object" not in plain
    ram = tmp_path / "a,b" / "ram.bin"
    for shared, share in ((True, "on"), (False, "off")):
        argv = build_argv(config(tmp_path, ram_file=ram, ram_file_shared=shared))
        assert value_after(argv, "-M") == ["microvm,acpi=on,memory-backend=ram0"]
        assert value_after(argv, "-object") == [
            f"memory-backend-file,id=ram0,size=512M,mem-path={tmp_path}/a,,b/ram.bin,"
            f"share={share}"]
        assert value_after(argv, "-m") == ["512"]  # QEMU checks the backend against it


def test_free_page_reporting_only_for_a_cold_tcg_guests_own_ram(tmp_path: Path) -> None:
    def balloon(**changes: object) -> str:
        (device,) = [d for d in value_after(build_argv(config(tmp_path, **changes)), "-device")
                     if d.startswith("virtio-balloon-device")]
        return device

    assert balloon() == "virtio-balloon-device,id=balloon0,free-page-reporting=on"
    # a restore's private RAM file: QEMU 7.2 would punch holes in the template's file;
    # a build's shared one: its snapshot keeps the balloon the restores declare
    ram = tmp_path / "ram.bin"
    for changes in ({"ram_file": ram, "ram_file_shared": True, "incoming": False},
                    {"ram_file": ram, "ram_file_shared": False, "incoming": True},
                    {"incoming": True}, {"accel": "kvm"}):
        assert balloon(**changes) == "virtio-balloon-device,id=balloon0", changes


def test_commas_in_paths_are_escaped_for_qemu_options(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    argv = build_argv(config(tmp_path, console_log=odd / "console.log", qmp_socket=odd / "q.sock"))
    assert value_after(argv, "-chardev") == [
        f"file,id=con0,path={tmp_path}/a,,b/console.log,append=on"]
    assert value_after(argv, "-qmp") == [f"unix:{tmp_path}/a,,b/q.sock,server=on,wait=off"]


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "Web"},
        {"name": "a b"},
        {"name": "x,id=evil"},
        {"name": "-rf"},
        {"boot_id": "a b"},
        {"ssh_port": 0},
        {"ssh_port": 70000},
        {"vcpus": 0},
        {"memory_mib": 16},
        {"append": "a\nb"},
        {"tsc_khz": 5},
    ],
)
def test_values_that_would_change_the_command_are_rejected(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    with pytest.raises(GuestImageError):
        build_argv(config(tmp_path, **changes))


def test_disk_image_is_attached_as_virtio_blk(tmp_path: Path) -> None:
    base = QemuConfig(
        name="vm", vcpus=1, memory_mib=256, kernel=tmp_path / "k", initrd=tmp_path / "i",
        accel="tcg", ssh_port=2222, console_log=tmp_path / "c", qmp_socket=tmp_path / "q",
        pidfile=tmp_path / "p", boot_id="b1",
    )
    assert "-drive" not in build_argv(base)
    argv = build_argv(replace(base, disk_image=tmp_path / "disk,1.qcow2"))
    drive = argv[argv.index("-drive") + 1]
    assert "format=qcow2" in drive and "disk,,1.qcow2" in drive
    assert "virtio-blk-device,drive=disk0" in argv
    raw = build_argv(replace(base, disk_image=tmp_path / "disk.img"))
    assert "format=raw" in raw[raw.index("-drive") + 1]


def test_published_ports_are_forwarded_on_loopback(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, ssh_port=40123, port_forwards=((40200, 80),
                                                                       (40201, 8080))))
    (netdev,) = value_after(argv, "-netdev")
    assert netdev.split(",")[2:] == ["hostfwd=tcp:127.0.0.1:40123-:22",
                                     "hostfwd=tcp:127.0.0.1:40200-:80",
                                     "hostfwd=tcp:127.0.0.1:40201-:8080"]
    with pytest.raises(GuestImageError, match="invalid port forward"):
        build_argv(config(tmp_path, port_forwards=((0, 80),)))


def test_only_stand_ins_run_under_demo(tmp_path: Path) -> None:
    """"demo" is an accelerator name only the stand-in driver takes: QEMU refuses it."""
    with pytest.raises(GuestImageError, match="QEMU cannot run a guest under accel 'demo'"):
        build_argv(config(tmp_path, accel="demo"))
