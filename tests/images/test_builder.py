"""Building images with the stand-in mmdebstrap (real tar, real mkfs.ext4, real files)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backend.images.builder import build_image
from backend.images.errors import ImageBuildError, ImageInUseError, ImageNotFoundError
from backend.images.progress import ImageProgress
from backend.images.store import find_image, list_images, os_images_dir, remove_image
from backend.state.state_dir import StateDir
from tests.images.helpers import KERNEL_VERSION, Stand, debugfs

RECIPE = """
suite = "bookworm"
packages = ["openssh-server"]
run = ["true"]

[[files]]
path = "/etc/motd"
content = "hi"
mode = "0600"
"""


@pytest.fixture
def stand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dirs: StateDir) -> Stand:
    stand = Stand(tmp_path / "stand")
    stand.root.mkdir()
    monkeypatch.setenv("FAKE_MMDEBSTRAP_RECORD", str(stand.record))
    recipes = dirs.images / "recipes"
    recipes.mkdir(parents=True)
    (recipes / "tiny.toml").write_text(RECIPE)
    return stand


def leftovers(dirs: StateDir) -> list[str]:
    return sorted(p.name for p in os_images_dir(dirs).iterdir() if p.name != ".lock")


async def test_build_writes_a_trimmed_image_and_its_record(dirs: StateDir, stand: Stand
                                                           ) -> None:
    events: list[ImageProgress] = []
    result = await build_image(dirs, "tiny", events.append, tools=stand.tools())
    assert not result.cache_hit
    info = find_image(dirs, "tiny")
    assert info is not None and info == result.image
    assert (info.name, info.recipe, info.kernel_version, info.packages) == \
        ("tiny", "tiny", KERNEL_VERSION, 3)
    assert info.size_bytes == info.rootfs.stat().st_size
    assert oct(info.rootfs.stat().st_mode & 0o777) == "0o444"
    assert leftovers(dirs) == ["tiny"]
    # host keys left out, units and generators masked, sshd first, the power button
    # handled, machine-id emptied
    assert "ssh_host" not in debugfs(info.rootfs, "ls /etc/ssh")
    assert "sshd_config" in debugfs(info.rootfs, "ls /etc/ssh")
    assert "/dev/null" in debugfs(info.rootfs, "stat /etc/systemd/system/apt-daily.timer")
    assert "apt-daily" not in debugfs(info.rootfs,
                                      "ls /etc/systemd/system/timers.target.wants")
    for masked in ("systemd-udev-trigger.service", "systemd-networkd.service",
                   "system-generators/systemd-gpt-auto-generator"):
        assert "/dev/null" in debugfs(info.rootfs, f"stat /etc/systemd/{masked}"
                                      if "/" in masked else
                                      f"stat /etc/systemd/system/{masked}")
    ssh_unit = debugfs(info.rootfs, "cat /etc/systemd/system/ssh.service")
    assert "DefaultDependencies=no" in ssh_unit and "network.target" not in ssh_unit
    assert "ExecStartPre" not in ssh_unit  # no second sshd start to check the config
    assert "systemctl poweroff" in debugfs(info.rootfs, "cat /usr/local/lib/boxui/powerkey")
    assert "boxui-powerkey" in debugfs(info.rootfs,
                                       "ls /etc/systemd/system/multi-user.target.wants")
    assert "10.0.2.3" in debugfs(info.rootfs, "cat /etc/resolv.conf")
    assert "After=boxui-ready.service" in debugfs(
        info.rootfs, "cat /etc/systemd/system/systemd-udevd.service.d/boxui-after-ready.conf")
    assert debugfs(info.rootfs, "cat /etc/machine-id").strip() == ""
    steps = [e.step for e in events]
    for step in ("resolving", "downloading", "unpacking", "configuring", "packing", "done"):
        assert step in steps
    assert any(e.step == "downloading" and (e.done, e.total) == (3, 3) for e in events)
    # what mmdebstrap was asked: kmod always, the modules, the file, the command
    argv = stand.calls()[0]["argv"]
    assert isinstance(argv, list)
    assert "--include=openssh-server,kmod" in argv and "--mode=unshare" in argv
    assert any(a.startswith("--customize-hook=sync-in ") for a in argv)
    assert any("depmod -a 6.1.0-test" in a for a in argv)
    assert any(a.startswith("--customize-hook=upload ") and a.endswith(" /etc/motd")
               for a in argv)
    assert any("chmod 600 /etc/motd" in a for a in argv)
    assert argv[-5] == "bookworm" and argv[-4].endswith("rootfs.tar")
    assert argv[-3:] == [f"deb http://deb.debian.org/debian bookworm{s} main"
                         for s in ("", "-updates")] + [
        "deb http://security.debian.org/debian-security bookworm-security main"]


async def test_same_inputs_are_a_cache_hit_and_new_ones_rebuild(dirs: StateDir,
                                                                stand: Stand) -> None:
    tools = stand.tools()
    first = await build_image(dirs, "tiny", tools=tools)
    started = time.monotonic()
    again = await build_image(dirs, "tiny", tools=tools)
    assert again.cache_hit and again.image.hash == first.image.hash
    assert time.monotonic() - started < 5
    assert len(stand.calls()) == 1
    stand.digest = "index-2"  # the archive moved on
    newer = await build_image(dirs, "tiny", tools=tools)
    assert not newer.cache_hit and newer.image.hash != first.image.hash
    assert len(stand.calls()) == 2
    assert leftovers(dirs) == ["tiny"]


async def test_changed_image_in_use_is_not_replaced(dirs: StateDir, stand: Stand) -> None:
    tools = stand.tools()
    first = await build_image(dirs, "tiny", tools=tools)
    stand.digest = "index-2"
    with pytest.raises(ImageInUseError, match="web"):
        await build_image(dirs, "tiny", tools=tools, users=lambda name: ["web"])
    assert find_image(dirs, "tiny") == first.image


@pytest.mark.parametrize(("mode", "step", "package"), [
    ("missing-package", "resolving", "nosuchpkg"),
    ("dpkg-error", "configuring", "openssh-server"),
])
async def test_failed_build_names_step_and_package_and_leaves_nothing(
        dirs: StateDir, stand: Stand, monkeypatch: pytest.MonkeyPatch, mode: str, step: str,
        package: str) -> None:
    monkeypatch.setenv("FAKE_MMDEBSTRAP", mode)
    with pytest.raises(ImageBuildError) as caught:
        await build_image(dirs, "tiny", tools=stand.tools())
    assert (caught.value.step, caught.value.package) == (step, package)
    assert f"while {step} {package}" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert find_image(dirs, "tiny") is None and leftovers(dirs) == []


async def test_full_disk_in_mmdebstrap_is_one_clear_line(dirs: StateDir, stand: Stand,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv("FAKE_MMDEBSTRAP", "no-space")
    with pytest.raises(ImageBuildError, match="no space left on device"):
        await build_image(dirs, "tiny", tools=stand.tools())
    assert find_image(dirs, "tiny") is None and leftovers(dirs) == []


async def test_cancelled_build_kills_mmdebstrap_and_leaves_nothing(
        dirs: StateDir, stand: Stand, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = stand.root / "ready"
    monkeypatch.setenv("FAKE_MMDEBSTRAP", "hang")
    monkeypatch.setenv("FAKE_MMDEBSTRAP_READY", str(ready))
    task = asyncio.ensure_future(build_image(dirs, "tiny", tools=stand.tools()))
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, "the fake mmdebstrap never started"
        assert not task.done(), task
        await asyncio.sleep(0.05)
    pid = int(ready.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert find_image(dirs, "tiny") is None and leftovers(dirs) == []


KILLED_BUILDER = """
import asyncio, sys
from pathlib import Path
from backend.images.builder import build_image
from backend.state.state_dir import open_state_dir
from tests.images.helpers import Stand
stand = Stand(Path(sys.argv[2]))
asyncio.run(build_image(open_state_dir(Path(sys.argv[1])), "tiny", tools=stand.tools()))
"""


async def test_sigkilled_builder_leaves_no_image_and_no_mmdebstrap(
        dirs: StateDir, stand: Stand, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = stand.root / "ready"
    monkeypatch.setenv("FAKE_MMDEBSTRAP", "hang")
    monkeypatch.setenv("FAKE_MMDEBSTRAP_READY", str(ready))
    builder = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, str(dirs.root),
                                str(stand.root)], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, "the fake mmdebstrap never started"
            assert builder.poll() is None
            time.sleep(0.05)
        fake = psutil.Process(int(ready.read_text()))
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=30)
        fake.wait(timeout=30)  # died with its parent (PR_SET_PDEATHSIG)
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait(timeout=30)
    assert find_image(dirs, "tiny") is None
    assert [n for n in leftovers(dirs) if n.startswith(".build-")]  # not an image...
    monkeypatch.setenv("FAKE_MMDEBSTRAP", "ok")
    await build_image(dirs, "tiny", tools=stand.tools())
    assert leftovers(dirs) == ["tiny"]  # ...and the next build removes it


def test_remove_image_refuses_while_used_then_removes(dirs: StateDir, stand: Stand) -> None:
    asyncio.run(build_image(dirs, "tiny", tools=stand.tools()))
    with pytest.raises(ImageInUseError, match="'tiny' is used by machine"):
        remove_image(dirs, "tiny", ["web"])
    assert find_image(dirs, "tiny") is not None
    remove_image(dirs, "tiny", [])
    assert find_image(dirs, "tiny") is None and list_images(dirs) == []
    with pytest.raises(ImageNotFoundError):
        remove_image(dirs, "tiny", [])


def test_a_directory_without_image_json_is_not_an_image(dirs: StateDir) -> None:
    half = os_images_dir(dirs) / "half"
    half.mkdir(parents=True)
    (half / "rootfs.ext4").write_bytes(b"")
    assert find_image(dirs, "half") is None and list_images(dirs) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_full_disk_while_packing_leaves_nothing(tmp_path: Path, stand: Stand,
                                                      monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    from backend.state.state_dir import open_state_dir

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)],
                             capture_output=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        tiny_dirs = open_state_dir(small / "home")
        (tiny_dirs.images / "recipes").mkdir(parents=True)
        (tiny_dirs.images / "recipes" / "tiny.toml").write_text(RECIPE)
        monkeypatch.setenv("FAKE_MMDEBSTRAP_PADDING", str(2_000_000))  # tar fits, not twice
        with pytest.raises(ImageBuildError, match="no space left on device"):
            await build_image(tiny_dirs, "tiny", tools=stand.tools())
        assert find_image(tiny_dirs, "tiny") is None and leftovers(tiny_dirs) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False, timeout=30)
