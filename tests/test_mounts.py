"""Shared folders: the `--mount` syntax, `mounts` in machine.toml, the QEMU devices, what
goes into the guest's initrd, and the refusal of a missing host folder before a boot."""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from backend.drivers.qemu.cmdline import QemuConfig, build_argv
from backend.errors import SpecError
from backend.guest.debian_initrd import DEBIAN_MOUNT_SCRIPT, debian_seed_archive
from backend.guest.errors import GuestImageError
from backend.guest.guest_files import INITTAB
from backend.guest.machine_seed import create_machine_keys, seed_archive
from backend.guest.newc import read_archive
from backend.guest.shared_folders import (
    SHARE_MODULES,
    default_guest_share_entries,
    kernel_share_modules,
    mount_script,
    share_entries,
)
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec, parse_spec, read_spec, write_spec
from backend.state.mount_spec import MountError, MountSpec, check_mount_sources, parse_mount
from tests.api_helpers import Api
from tests.conftest import BOXUI, cli_env

P = Path("/state/machines/web/machine.toml")
MODULES = {name: f"{name}-ko".encode() for name, _ in SHARE_MODULES}


@pytest.mark.parametrize(("text", "host", "guest", "readonly"), [
    ("/srv/src", "/srv/src", "/srv/src", False),  # Lima's and Multipass's default
    ("/srv/src:ro", "/srv/src", "/srv/src", True),
    ("/srv/src:/src", "/srv/src", "/src", False),
    ("/srv/src:/src:ro", "/srv/src", "/src", True),
    ("/srv/src/:/src/:rw", "/srv/src", "/src", False),
    ("rel/dir", "/home/me/rel/dir", "/home/me/rel/dir", False),  # from the caller's cwd
])
def test_mount_syntax(text: str, host: str, guest: str, readonly: bool) -> None:
    mount = parse_mount(text, Path("/home/me"))
    assert (mount.host, mount.guest, mount.readonly) == (host, guest, readonly)


@pytest.mark.parametrize(("text", "expected"), [
    ("/a:/b:/c", "expected HOST_DIR[:GUEST_DIR][:ro]"),
    (":/b", "expected HOST_DIR"),
    ("/a:b", "guest dir 'b': must be an absolute path"),
    ("/a:/x/../etc", "must not contain '..'"),
    ("/a/../b", "must not contain '..'"),
    ("/a:/", "cannot replace the guest's root"),
    ("/a:/proc/x", "/proc belongs to the guest"),
    ("/run/user/1000/x", "/run belongs to the guest"),
])
def test_bad_mounts_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(MountError) as info:
        parse_mount(text, Path("/home/me"))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_mounts_round_trip_through_machine_toml(tmp_path: Path) -> None:
    spec = MachineSpec(name="web", mounts=[parse_mount("/srv/src"),
                                           parse_mount("/srv/data:/data:ro")])
    path = tmp_path / "machine.toml"
    write_spec(path, spec)
    assert read_spec(path) == spec
    assert 'readonly = true' in path.read_text()
    # a plain machine's file does not grow an empty list
    write_spec(path, MachineSpec(name="web"))
    assert "mounts" not in path.read_text()


@pytest.mark.parametrize(("text", "expected"), [
    ('mounts = [{ host = "src" }]', "must be an absolute path"),
    ('mounts = [{ host = "/a", guest = "/x" }, { host = "/b", guest = "/x" }]',
     "mounted twice"),
    ('mounts = [{ host = "/a", readonly = "yes" }]', "mounts.0.readonly"),
    ('mounts = [{ host = "/a", mode = "ro" }]', "unknown key 'mounts.0.mode'"),
    ('template = "web:worker"\nmounts = [{ host = "/a" }]', "restores a snapshot"),
])
def test_bad_mounts_in_machine_toml_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(f'name = "web"\n{text}\n', P)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_or_non_directory_host_dirs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    check_mount_sources("web", [MountSpec(host=str(tmp_path))])
    with pytest.raises(MountError, match="no such directory on this host"):
        check_mount_sources("web", [MountSpec(host=str(tmp_path / "gone"))])
    with pytest.raises(MountError, match="not a directory"):
        check_mount_sources("web", [MountSpec(host=str(tmp_path / "file"))])


def test_qemu_gets_one_9p_device_per_mount(tmp_path: Path) -> None:
    config = QemuConfig(name="web", vcpus=1, memory_mib=256, kernel=tmp_path / "k",
                        initrd=tmp_path / "i", accel="tcg", ssh_port=2222,
                        console_log=tmp_path / "c", qmp_socket=tmp_path / "q",
                        pidfile=tmp_path / "p", boot_id="b1")
    assert "-fsdev" not in build_argv(config)
    argv = build_argv(replace(config, mounts=(parse_mount("/srv/a,b"),
                                              parse_mount("/srv/c:/c:ro"))))
    fsdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-fsdev"]
    # the guest's files must be the host user's, with the modes the guest gave them
    assert fsdevs == ["local,id=fs0,path=/srv/a,,b,security_model=none",
                      "local,id=fs1,path=/srv/c,security_model=none,readonly=on"]
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert "virtio-9p-device,fsdev=fs0,mount_tag=boxui0,id=boxui0" in devices
    assert "virtio-9p-device,fsdev=fs1,mount_tag=boxui1,id=boxui1" in devices


def _fake_tools(bin_dir: Path, log: Path) -> dict[str, str]:
    """insmod and mount that only record their arguments."""
    bin_dir.mkdir()
    for tool in ("insmod", "mount"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_mount_script_loads_9p_and_mounts_each_share_under_the_root(tmp_path: Path) -> None:
    mounts = [parse_mount("/srv/my src"), parse_mount("/srv/data:/data:ro")]
    script, root, log = tmp_path / "mounts", tmp_path / "root", tmp_path / "log"
    script.write_text(mount_script(mounts))
    root.mkdir()
    subprocess.run(["sh", str(script), str(root)], check=True, timeout=30,
                   env=_fake_tools(tmp_path / "bin", log))
    lines = log.read_text().splitlines()
    assert lines[:5] == [f"insmod /lib/boxui-modules/{name}.ko" for name, _ in SHARE_MODULES]
    assert lines[5] == ("mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap "
                        f"boxui0 {root}/srv/my src")
    assert lines[6].startswith("mount -t 9p -o ") and f"cache=mmap,ro boxui1 {root}/data" \
        in lines[6]
    assert (root / "srv/my src").is_dir() and (root / "data").is_dir()


def test_default_guest_runs_the_script_before_sshd(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m")
    extra = default_guest_share_entries([parse_mount("/srv/src")], MODULES)
    entries = {e.name: e for e in read_archive(seed_archive(keys, extra=extra))}
    inittab = entries["etc/inittab"].data.decode()
    # busybox init finishes sysinit entries before it starts respawn (dropbear) ones
    assert inittab.splitlines()[0] == "::sysinit:/etc/boxui/mounts"
    assert inittab.endswith(INITTAB)
    assert stat.S_IMODE(entries["etc/boxui/mounts"].mode) == 0o755
    assert entries["lib/boxui-modules/9p.ko"].data == b"9p-ko"
    assert "boxui0 \"$R\"/srv/src" in entries["etc/boxui/mounts"].data.decode()
    plain = {e.name for e in read_archive(seed_archive(keys))}
    assert "etc/inittab" not in plain and "lib/boxui-modules/9p.ko" not in plain


def test_a_kernel_with_9p_built_in_gets_the_script_alone(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m")
    extra = default_guest_share_entries([parse_mount("/srv/src")], {})  # boxui's kernel
    entries = {e.name: e for e in read_archive(seed_archive(keys, extra=extra))}
    script = entries["etc/boxui/mounts"].data.decode()
    assert "insmod" not in script and "boxui0 \"$R\"/srv/src" in script
    assert not [name for name in entries if name.endswith(".ko")]


def test_debian_init_mounts_under_the_new_root_before_switch_root(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m")
    extra = share_entries([parse_mount("/srv/src")], MODULES, DEBIAN_MOUNT_SCRIPT)
    entries = {e.name: e for e in read_archive(debian_seed_archive(keys, {}, extra))}
    init = entries["init"].data.decode()
    call = f"[ -x /{DEBIAN_MOUNT_SCRIPT} ] && /{DEBIAN_MOUNT_SCRIPT} $R"
    assert call in init and init.index(call) < init.index("switch_root")
    assert DEBIAN_MOUNT_SCRIPT in entries and "lib/boxui-modules/netfs.ko" in entries


def _kernel_deb(tmp_path: Path, version: str, names: list[str]) -> Path:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: linux-image-{version}\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: t <t@t>\nDescription: t\n")
    for name, relative in SHARE_MODULES:
        if name in names:
            path = tree / f"lib/modules/{version}/kernel/{relative}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{name}-ko".encode())
    debs = tmp_path / "images/debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = debs / f"linux-image-{version}_1_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(deb)], check=True,
                   capture_output=True, timeout=60)
    return deb


def test_default_guest_modules_come_from_its_kernel_package_once(tmp_path: Path) -> None:
    deb = _kernel_deb(tmp_path, "6.1.0-t", [name for name, _ in SHARE_MODULES])
    images = tmp_path / "images"
    assert kernel_share_modules(images, "6.1.0-t") == MODULES
    deb.unlink()  # kept from the first time
    assert kernel_share_modules(images, "6.1.0-t") == MODULES
    with pytest.raises(GuestImageError, match="rebuild the default image"):
        kernel_share_modules(images, "6.1.0-other")


def test_a_kernel_package_without_9p_leaves_no_cache(tmp_path: Path) -> None:
    _kernel_deb(tmp_path, "6.1.0-t", ["netfs", "9pnet"])
    with pytest.raises(GuestImageError, match="has no fscache, 9pnet_virtio, 9p module"):
        kernel_share_modules(tmp_path / "images", "6.1.0-t")
    assert not (tmp_path / "images/share-modules/6.1.0-t").exists()
    assert list((tmp_path / "images/share-modules").iterdir()) == []


async def test_api_refuses_a_missing_host_dir_before_the_machine_exists(
        api: Api, engine: Engine, tmp_path: Path) -> None:
    body = {"name": "web", "mounts": [{"host": str(tmp_path / "gone")}]}
    answer = await api.client.post("/v1/machines", json=body)
    assert answer.status_code == 422 and answer.json()["code"] == "invalid_mount"
    assert "no such directory" in answer.json()["message"]
    assert not engine.store.exists("web")


async def test_a_host_dir_gone_since_create_is_refused_before_booting(
        api: Api, engine: Engine, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    created = await api.client.post("/v1/machines", json={
        "name": "web", "mounts": [{"host": str(share), "guest": "/src", "readonly": True}]})
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["mounts"] == [
        {"host": str(share), "guest": "/src", "readonly": True}]
    share.rmdir()
    answer = await api.client.post("/v1/machines/web/start")
    assert answer.status_code == 422 and answer.json()["code"] == "invalid_mount"
    assert engine.projection.state_of("web") is InstanceState.STOPPED
    assert api.driver.starts.get("web", 0) == 0


def test_cli_mount_errors_are_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    bad = subprocess.run([*BOXUI, "create", "web", "--mount", "/a:/b:/c"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected HOST_DIR[:GUEST_DIR][:ro]" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home/logs/daemon.log").exists()  # refused before any daemon
