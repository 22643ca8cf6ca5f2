"""With another host chosen, no command acts locally: every command and subcommand is
walked with BOXUI_HOST naming a remote boxui (relay and API faked here; the real ones
over a test sshd are in test_hosts_remote.py), and a plain and a libvirt host."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from backend.errors import BoxuiError
from backend.hosts.registry import HostDef, add_host
from backend.state.state_dir import open_state_dir
from boxui.cli import host_routing, root
from boxui.cli.root import LOCAL_COMMANDS, cli, command_leaves

#: what each command that runs here against the remote API is given in the walk
API_ARGS = {"create": ["vm"], "start": ["vm"], "stop": ["vm"], "restart": ["vm"],
            "rm": ["vm"], "exec": ["vm", "--", "true"], "ssh": ["vm"],
            "port add": ["vm", "80"], "port rm": ["vm", "80"]}


class ReachedRemoteApi(Exception):
    pass


def leaves() -> list[tuple[str, click.Command]]:
    commands = cli.all_commands
    return [leaf for name, command in commands.items() if name not in LOCAL_COMMANDS
            for leaf in command_leaves(name, command)]


def defaults(command: click.Command) -> dict[str, object]:
    """Keyword arguments as click would give them with nothing on the command line."""
    return {p.name: (() if p.multiple or p.nargs == -1 else p.default)
            for p in command.params if p.expose_value and p.name}


@pytest.fixture
def remote(home: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """BOXUI_HOST names remote boxui `r1`; relays are recorded, the API is not reached."""
    dirs = open_state_dir(home)
    add_host(dirs, HostDef(name="r1", kind="boxui", address="ssh://u@127.0.0.1:9"))
    add_host(dirs, HostDef(name="build", kind="plain", address="ssh://u@127.0.0.1:9"))
    monkeypatch.setenv("BOXUI_HOST", "r1")
    relayed: list[tuple[str, list[str]]] = []

    def relay(host: HostDef, args: list[str]) -> int:
        relayed.append((host.name, args))
        return 0

    def api(host: HostDef) -> None:
        raise ReachedRemoteApi(host.name)

    def session(host: HostDef, command: tuple[str, ...], *, tty: bool = False) -> None:
        raise ReachedRemoteApi(host.name)

    monkeypatch.setattr("boxui.cli.hosts.relay_to_remote", relay)
    monkeypatch.setattr("boxui.daemon.remote.remote_daemon", api)
    monkeypatch.setattr("boxui.cli.hosts.ssh_to_host", session)
    return relayed


def test_every_command_is_routed_or_listed_as_local() -> None:
    paths = {path for path, _ in leaves()}
    assert {"pool ls", "cells", "commands", "disk show", "gc", "template build",
            "service create", "daemon status", "run", "cp"} <= paths
    for path, command in leaves():
        assert any(p.name == "host" for p in command.params), path
    local = cli.all_commands["host"]
    assert all(not any(p.name == "host" for p in c.params)
               for _, c in command_leaves("host", local))
    assert set(API_ARGS) == set(host_routing.API_ROUTED)
    for path in (*host_routing.HOST_PATH_OPTIONS, *host_routing.REMOTE_REFUSED):
        assert path in paths, f"{path} is named in host_routing but is no command"


def test_no_command_runs_locally_on_a_remote(remote: list[tuple[str, list[str]]],
                                             home: Path) -> None:
    """Each command's own code is never run for a relayed one; an API one reaches the
    remote's API; the ones that cannot go are one line naming the host."""
    ran_here: list[str] = []
    for path, command in leaves():
        if path in API_ARGS:
            result = CliRunner().invoke(cli, [*path.split(), *API_ARGS[path]])
            assert isinstance(result.exception, ReachedRemoteApi), (path, result.output)
            continue
        callback = command.callback
        assert callback is not None
        root._command_args = [*path.split(), "--host", "r1"]
        before = len(remote)
        try:
            callback(**defaults(command))
        except SystemExit as exc:
            assert exc.code == 0 and len(remote) == before + 1, path
            assert remote[-1] == ("r1", path.split()), path  # --host left out
        except click.UsageError:
            assert path == "cp", path  # its SRC and DST, both None, are refused first
        except BoxuiError as exc:
            assert path in host_routing.REMOTE_REFUSED, (path, exc)
            assert "--host r1" in str(exc) and "\n" not in str(exc)
        else:
            ran_here.append(path)
    assert ran_here == []
    assert not (home / "machines").exists() or not any((home / "machines").iterdir())


@pytest.mark.parametrize(("args", "option"), [
    (["create", "vm", "--mount", "/tmp"], "--mount"),
    (["create", "vm", "--kernel", "/etc/hostname", "--initrd", "/etc/hostname"], "--kernel"),
    (["create", "vm", "--disk-image", "/etc/hostname"], "--disk-image"),
])
def test_a_host_path_is_refused_in_one_line_naming_the_option(
        remote: list[tuple[str, list[str]]], args: list[str], option: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, BoxuiError), result.output
    message = str(result.exception)
    assert option in message and "r1" in message and "\n" not in message
    assert remote == []


def test_template_build_from_a_file_is_refused_and_by_id_relayed(
        remote: list[tuple[str, list[str]]], tmp_path: Path) -> None:
    source = tmp_path / "web.toml"
    source.write_text("")
    result = CliRunner().invoke(cli, ["template", "build", str(source)])
    assert isinstance(result.exception, BoxuiError) and "FILE" in str(result.exception)
    result = CliRunner().invoke(cli, ["template", "build", "web", "--host", "r1"])
    assert result.exit_code == 0 and remote == [("r1", ["template", "build", "web"])]


def test_create_from_a_template_is_relayed(remote: list[tuple[str, list[str]]]) -> None:
    result = CliRunner().invoke(cli, ["create", "vm", "--template", "web"])
    assert result.exit_code == 0, result.output
    assert remote == [("r1", ["create", "vm", "--template", "web"])]


def test_every_command_on_a_plain_host_is_one_line(
        remote: list[tuple[str, list[str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXUI_HOST", "build")
    for path, command in leaves():
        callback = command.callback
        assert callback is not None
        with pytest.raises(BoxuiError) as refused:
            callback(**defaults(command))
        assert "build is a plain host" in str(refused.value), path
    assert remote == []
