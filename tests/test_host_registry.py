"""The host registry and `boxui host add/ls/rm/use/import`, with no host to reach."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from backend.hosts.address import BadHostAddressError, parse_ssh_address
from backend.hosts.plain_stats import parse_disk, parse_load, parse_memory, parse_users
from backend.hosts.registry import HostDef, HostsFileError, add_host, load_hosts
from backend.state.state_dir import StateDir
from boxui.cli.hosts import strip_host_option
from tests.conftest import BOXUI, cli_env
from tests.daemon_helpers import boxui


def test_ssh_addresses_are_parsed_or_refused() -> None:
    address = parse_ssh_address("ssh://me@build-1.example:2222")
    assert (address.user, address.host, address.port) == ("me", "build-1.example", 2222)
    assert parse_ssh_address("ssh://box").port is None
    for bad in ("box", "ssh://-oProxyCommand=x", "ssh://a b", "ssh://h:0", "ssh://h/path",
                "ssh://u:pw@h", "ssh://h:99999", "http://h"):
        with pytest.raises(BadHostAddressError):
            parse_ssh_address(bad)


def test_add_ls_use_rm_round_trip(home: Path) -> None:
    added = boxui(home, "host", "add", "build", "ssh://me@10.9.9.9:2222", "--plain")
    assert added.returncode == 0, added.stderr
    assert boxui(home, "host", "add", "virt", "--libvirt", "qemu:///system").returncode == 0
    stored = tomllib.loads((home / "hosts.toml").read_text())
    assert stored["hosts"]["build"] == {"kind": "plain", "address": "ssh://me@10.9.9.9:2222"}
    assert boxui(home, "host", "use", "virt").returncode == 0
    listed = json.loads(boxui(home, "host", "ls", "--json").stdout)
    assert [h["name"] for h in listed] == ["local", "build", "virt"]
    assert [h["current"] for h in listed] == [False, False, True]
    assert listed[2]["reachable"] is False and "libvirt" in listed[2]["reason"]
    removed = boxui(home, "host", "rm", "virt")
    assert removed.returncode == 0, removed.stderr
    assert not (home / "current-host").exists()  # its host gone, commands act locally
    assert list(load_hosts(StateDir(home))) == ["build"]


@pytest.mark.parametrize("args", [
    ["rm", "local"], ["add", "x", "http://h"], ["add", "x", "ssh://h", "--libvirt", "q:///s"],
    ["use", "nope"], ["rm", "nope"], ["add", "Bad_Name", "ssh://h"],
])
def test_bad_input_is_one_line_and_changes_nothing(home: Path, args: list[str]) -> None:
    assert boxui(home, "host", "add", "keep", "ssh://h").returncode == 0
    before = (home / "hosts.toml").read_bytes()
    out = boxui(home, "host", *args)
    assert out.returncode in (1, 2) and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("boxui"), out.stderr
    assert (home / "hosts.toml").read_bytes() == before


def test_a_duplicate_name_is_refused(dirs: StateDir) -> None:
    add_host(dirs, HostDef(name="a", kind="boxui", address="ssh://h"))
    with pytest.raises(HostsFileError, match="exists already"):
        add_host(dirs, HostDef(name="a", kind="plain", address="ssh://h2"))


def test_an_invalid_file_is_reported_and_never_overwritten(home: Path) -> None:
    home.mkdir(mode=0o700)
    (home / "hosts.toml").write_text('[hosts.a]\nkind = "boxui"\naddress = "ftp://x"\n')
    out = boxui(home, "host", "add", "b", "ssh://h")
    assert out.returncode == 1 and "hosts.toml: host 'a'" in out.stderr, out.stderr
    assert "ftp://x" in (home / "hosts.toml").read_text()


def test_import_takes_concrete_host_entries(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host build1 build2\n  HostName 10.0.0.1\nHost *.corp !x\n"
                      "Host Upper\nHost=ci\n  User me\n")
    out = boxui(home, "host", "import", "--config", str(config), "--yes", "--plain")
    assert out.returncode == 0, out.stderr
    assert "skipped Upper" in out.stderr
    hosts = load_hosts(StateDir(home))
    assert sorted(hosts) == ["build1", "build2", "ci"]
    assert hosts["ci"].address == "ssh://ci" and hosts["ci"].kind == "plain"
    again = boxui(home, "host", "import", "--config", str(config), "--yes")
    assert again.stdout.startswith("nothing to add"), again.stdout


def test_import_asks_for_each(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host one\nHost two\n")
    out = subprocess.run([*BOXUI, "host", "import",
                          "--config", str(config)], input="y\nn\n", capture_output=True,
                         text=True, env=cli_env(home),
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(load_hosts(StateDir(home))) == ["one"]


def test_host_option_is_stripped_before_the_guest_command_only() -> None:
    assert strip_host_option(["ls", "--host", "r", "--json"]) == ["ls", "--json"]
    assert strip_host_option(["logs", "--host=r", "vm"]) == ["logs", "vm"]
    assert strip_host_option(["exec", "vm", "--", "x", "--host", "y"]) == [
        "exec", "vm", "--", "x", "--host", "y"]


def test_plain_samples_are_read() -> None:
    assert parse_load("0.50 0.25 0.10 1/200 3\n") == [0.5, 0.25, 0.1]
    memory = parse_memory("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  400 kB\n")
    assert memory == {"total": 1024000, "used": 614400}
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 100 40 60 40% /\n"
    assert parse_disk(df) == {"total": 102400, "used": 40960}
    assert parse_users("me pts/0 2024\nyou pts/1 x\nme pts/2 y\n") == ["me", "you"]
