"""`boxui image` from the command line: listing without a daemon, and bad input refused
in one line before any daemon is started."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from backend.state.state_dir import StateDir
from tests.conftest import BOXUI, background_daemons, cli_env
from tests.images.helpers import Stand
from tests.templates.helpers import fake_base_image


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=60)


def test_ls_lists_default_and_the_recipes(home: Path) -> None:
    (home / "images" / "recipes").mkdir(parents=True)
    (home / "images" / "recipes" / "mine.toml").write_text('packages = ["git"]\n')
    listed = run(home, "image", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert next(iter(entries)) == "default" and entries["default"]["kind"] == "default"
    assert {"debian-12", "debian-12-build", "mine"} <= set(entries)
    assert entries["mine"]["built"] is False
    text = run(home, "image", "ls")
    assert text.returncode == 0 and text.stdout.startswith("IMAGE")
    assert background_daemons(home) == []


@pytest.mark.parametrize(("args", "message"), [
    (("image", "build", "nosuch"), "boxui: no image recipe named 'nosuch'"),
    (("image", "build", "broken"), "broken.toml: field 'packages.0'"),
    (("image", "rm", "default"), "boxui: boxui's default guest cannot be removed"),
])
def test_bad_input_is_one_line_and_starts_no_daemon(home: Path, args: tuple[str, ...],
                                                    message: str) -> None:
    (home / "images" / "recipes").mkdir(parents=True)
    (home / "images" / "recipes" / "broken.toml").write_text('packages = ["No"]\n')
    done = run(home, *args)
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert background_daemons(home) == []


def test_invalid_image_name_is_a_usage_error(home: Path) -> None:
    done = run(home, "image", "build", "Bad")
    assert done.returncode == 2 and "invalid image name 'Bad'" in done.stderr


def test_build_ls_rm_through_the_daemon(home: Path, dirs: StateDir, tmp_path: Path) -> None:
    """The whole product path but mmdebstrap itself: the CLI starts a daemon, which takes
    the default guest's kernel .deb from the cache, unpacks its modules, runs the
    (stand-in) mmdebstrap found on PATH, packs with mkfs.ext4; progress on stderr."""
    fake_base_image(dirs)
    version = "6.1.0-99-amd64"
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{version}\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: test <t@example.org>\nDescription: test kernel\n")
    modules = package / "lib" / "modules" / version / "kernel" / "fs"
    modules.mkdir(parents=True)
    (modules / "ext4.ko").write_bytes(b"\x7fELF")
    (dirs.images / "debs").mkdir()
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(package),
                    str(dirs.images / "debs" / f"linux-image-{version}_1_amd64.deb")],
                   check=True, capture_output=True, timeout=60)
    mirror = tmp_path / "mirror" / "dists" / "bookworm"
    mirror.mkdir(parents=True)
    (mirror / "InRelease").write_text("Suite: bookworm\n")
    (dirs.images / "recipes").mkdir()
    (dirs.images / "recipes" / "local.toml").write_text(
        f'mirror = "file://{tmp_path / "mirror"}"\nupdates = false\nsecurity = false\n'
        'packages = ["bash"]\n')
    stand = Stand(tmp_path / "stand")
    stand.root.mkdir()
    stand.tools()  # writes the wrapper, found as `mmdebstrap` on PATH
    env = cli_env(home) | {"PATH": f"{stand.root}:{os.environ['PATH']}",
                           "FAKE_MMDEBSTRAP_RECORD": str(stand.record)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXUI, *args], capture_output=True, text=True, env=env,
                              timeout=120)

    built = cli("image", "build", "local", "--json")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["cache_hit"] is False and result["image"]["kernel_version"] == version
    for step in ("resolving", "downloading 3/3 openssh-server", "configuring 1/3 libc6",
                 "packing"):
        assert f"image: {step}" in built.stderr, built.stderr
    argv = stand.calls()[0]["argv"]
    assert isinstance(argv, list) and argv[-1] == f"deb file://{tmp_path / 'mirror'} " \
        "bookworm main"
    rootfs = dirs.images / "os" / "local" / "rootfs.ext4"
    assert rootfs.is_file()
    again = cli("image", "build", "local")
    assert again.returncode == 0 and "up to date (cache hit" in again.stdout
    listed = {e["name"]: e for e in json.loads(cli("image", "ls", "--json").stdout)}
    assert listed["local"]["built"] and listed["default"]["built"]
    removed = cli("image", "rm", "local")
    assert removed.returncode == 0 and removed.stdout.startswith("removed image local")
    assert not rootfs.exists()
    gone = cli("image", "rm", "local")
    assert gone.returncode == 1 and gone.stderr == "boxui: no image named 'local'\n"
