"""`boxui host ...`: the hosts boxui knows, and which one commands act on.

Everything past click is imported inside the commands: `host ls` on a laptop should not
pay for asyncssh unless a host is there to sample.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from boxui.cli.params import name_arg

if TYPE_CHECKING:
    from backend.hosts.registry import HostDef
    from backend.hosts.status import HostStatus
    from backend.state.state_dir import StateDir


def _dirs() -> StateDir:
    from backend.state.state_dir import open_state_dir

    return open_state_dir()


@click.group("host")
def host_group() -> None:
    """Other hosts: remote boxui over SSH, plain SSH build hosts, libvirt."""


def _ssh_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Checked while parsing, so a bad address is a usage error before anything is read."""
    if value is None:
        return None
    from backend.errors import BoxuiError
    from backend.hosts.address import parse_ssh_address

    try:
        return str(parse_ssh_address(value))
    except BoxuiError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@host_group.command("add")
@click.argument("name", callback=name_arg)
@click.argument("address", required=False, callback=_ssh_address)
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path),
              help="The private key to log in with (else ssh's own choice).")
@click.option("--plain", is_flag=True, help="A build host that runs no boxui.")
@click.option("--libvirt", "libvirt_uri", metavar="URI",
              help="A libvirt host: qemu:///system, qemu+ssh://user@host/system, ...")
def add_cmd(name: str, address: str | None, identity: Path | None, plain: bool,
            libvirt_uri: str | None) -> None:
    """Add a host: NAME ssh://[USER@]HOST[:PORT] [--plain], or NAME --libvirt URI."""
    from backend.hosts.registry import HostDef, add_host
    from backend.hosts.selection import LOCAL

    if name == LOCAL:
        raise click.UsageError("'local' is always there")
    if (libvirt_uri is None) == (address is None):
        raise click.UsageError("give an ssh:// address, or --libvirt URI")
    if libvirt_uri is not None and (plain or identity):
        raise click.UsageError("--plain and --identity are for ssh:// hosts")
    kind = "libvirt" if libvirt_uri else "plain" if plain else "boxui"
    host = HostDef(name=name, kind=kind, address=libvirt_uri or address or "",
                   identity=str(identity.absolute()) if identity else None)
    add_host(_dirs(), host)
    click.echo(f"added {kind} host {name} ({host.address})")


@host_group.command("rm")
@click.argument("name", callback=name_arg)
def rm_cmd(name: str) -> None:
    """Forget a host (its machines are not touched)."""
    from backend.hosts.registry import remove_host

    remove_host(_dirs(), name)
    click.echo(f"removed host {name}")


@host_group.command("use")
@click.argument("name", callback=name_arg)
def use_cmd(name: str) -> None:
    """Make NAME the host commands act on (`local` to come back)."""
    from backend.hosts.registry import use_host

    use_host(_dirs(), name)
    click.echo(f"commands act on {name} now")


@host_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(as_json: bool) -> None:
    """List hosts, each sampled now (reachability, latency, and its kind's figures)."""
    import asyncio

    from backend.hosts.kinds import sample_hosts
    from backend.hosts.registry import load_hosts, stored_current
    from backend.hosts.selection import LOCAL
    from boxui.cli.output import emit_json, table

    dirs = _dirs()
    hosts = load_hosts(dirs)
    current = stored_current(dirs)
    statuses = asyncio.run(sample_hosts(list(hosts.values())))
    if as_json:
        emit_json([{"name": LOCAL, "kind": "local", "current": current == LOCAL}]
                  + [s.as_json() | {"current": s.name == current} for s in statuses])
        return
    rows = [[("* " if current == LOCAL else "  ") + LOCAL, "local", "", "yes", "", ""]]
    rows += [[("* " if s.name == current else "  ") + s.name, s.kind, s.address,
              "yes" if s.reachable else "no",
              "" if s.latency_ms is None else f"{s.latency_ms:.0f} ms", _facts(s)]
             for s in statuses]
    click.echo(table(["  NAME", "KIND", "ADDRESS", "UP", "LATENCY", "DETAIL"], rows))


def _facts(status: HostStatus) -> str:
    """One cell: the reason it is down, else its kind's figures in short."""
    from backend.state.disk_size import format_size

    if status.reason:
        return status.reason
    facts = status.facts
    if status.kind == "plain":
        memory, disk, load = facts.get("memory"), facts.get("disk"), facts.get("load")
        parts = ["load " + " ".join(f"{x:.2f}" for x in load if isinstance(x, float))
                 if isinstance(load, list) else "load ?"]
        if isinstance(memory, dict) and memory.get("total"):
            parts.append(f"mem {format_size(memory['used'])}/{format_size(memory['total'])}")
        if isinstance(disk, dict) and disk.get("total"):
            parts.append(f"disk {format_size(disk['used'])}/{format_size(disk['total'])}")
        users = facts.get("users")
        parts.append("users " + (",".join(map(str, users)) if isinstance(users, list) and users
                                 else "none"))
        return ", ".join(parts)
    daemon = facts.get("daemon")
    if isinstance(daemon, dict):
        return f"daemon pid {daemon.get('pid')}, {daemon.get('machines')} machines"
    return "no daemon running (started on demand)" if "daemon" in facts else ""


@host_group.command("import")
@click.option("--config", "config_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The ssh config to read (default ~/.ssh/config).")
@click.option("--yes", "take_all", is_flag=True,
              help="Take every entry without asking (for scripts and tests).")
@click.option("--plain", is_flag=True, help="Add them as plain hosts (default: boxui).")
def import_cmd(config_path: Path | None, take_all: bool, plain: bool) -> None:
    """Offer the Host entries of ~/.ssh/config, one by one."""
    from backend.hosts.registry import HostDef, add_host, load_hosts
    from backend.hosts.selection import LOCAL
    from backend.hosts.ssh_config_import import ssh_config_aliases
    from backend.state.names import is_valid_name

    dirs = _dirs()
    path = config_path or Path.home() / ".ssh" / "config"
    known = load_hosts(dirs)
    added = 0
    for alias in ssh_config_aliases(path):
        if not is_valid_name(alias) or alias == LOCAL:
            click.echo(f"skipped {alias}: not usable as a host name", err=True)
            continue
        if alias in known:
            continue
        kind = "plain" if plain else "boxui"
        if not take_all and not click.confirm(f"add {alias} as a {kind} host?", default=True):
            continue
        add_host(dirs, HostDef(name=alias, kind=kind, address=f"ssh://{alias}"))
        click.echo(f"added {kind} host {alias} (ssh://{alias})")
        added += 1
    if not added:
        click.echo(f"nothing to add from {path}")


@host_group.command("endpoint", hidden=True)
@click.option("--json", "as_json", is_flag=True)
def endpoint_cmd(as_json: bool) -> None:
    """For a boxui on another host: this state dir's API socket, its daemon started
    first if none serves it."""
    from boxui.cli.output import emit_json
    from boxui.daemon.client import serving_daemon
    from boxui.daemon.spawn import ensure_daemon

    dirs = _dirs()
    running = serving_daemon(dirs)
    with ensure_daemon(dirs) as client:
        emit_json({"socket": str(dirs.api_socket), "pid": client.pid,
                   "started": running is None})


@host_group.command("stage", hidden=True)
def stage_cmd() -> None:
    """For a boxui on another host: a new private dir (0700) in this state dir for files
    that host moves here for a command it relays (`backend.hosts.staging`); its path."""
    import tempfile

    from backend.hosts.staging import STAGE_PREFIX

    base = _dirs().root / "staging"
    base.mkdir(mode=0o700, exist_ok=True)
    click.echo(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=base))


def ssh_to_host(host: HostDef, command: tuple[str, ...], *, tty: bool = False) -> None:
    """`boxui ssh NAME` for a host: the system ssh, with the host's definition; `tty`:
    with a terminal even for a command (`boxui ssh --host NAME MACHINE` runs one)."""
    from backend.hosts.address import parse_ssh_address

    address = parse_ssh_address(host.address)
    argv = ["ssh", "-t"] if tty else ["ssh"]
    if address.port:
        argv += ["-p", str(address.port)]
    if host.identity:
        argv += ["-i", host.identity]
    argv += ["--", f"{address.user}@{address.host}" if address.user else address.host]
    sys.stdout.flush()
    os.execvp(argv[0], argv + list(command))


def strip_host_option(args: list[str]) -> list[str]:
    """A command line without its `--host NAME` (before `--` only: after it, words are
    the guest command's)."""
    out: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return out + args[index:]
        if arg == "--host":
            index += 2
            continue
        if not arg.startswith("--host="):
            out.append(arg)
        index += 1
    return out


def relay_to_remote(host: HostDef, args: list[str]) -> int:
    """Run `boxui ARGS` on a remote boxui host, its output streamed here; its exit
    status. What only reads the state dir (ls, info, events, logs) runs there as it
    would here: same output, and it never starts a daemon."""
    import asyncio

    from backend.hosts import kept_link
    from backend.hosts.remote_boxui import REMOTE_BOXUI, RemoteBoxuiError

    if host.kind != "boxui":
        raise RemoteBoxuiError(f"host {host.name} is a {host.kind} host: it has no boxui "
                               "machines to show here")
    sys.stdout.flush()
    if kept_link.idle_timeout() > 0:  # the host's kept connection (started if need be)
        code = kept_link.relay(_dirs(), host, [REMOTE_BOXUI, *args])
    else:
        code = asyncio.run(_stream(host, [REMOTE_BOXUI, *args]))
    if code == 127:
        from backend.hosts.remote_boxui import INSTALL_HINT

        raise RemoteBoxuiError(f"host {host.name} has no boxui on its PATH: {INSTALL_HINT}")
    return code


async def _stream(host: HostDef, argv: list[str]) -> int:
    import asyncio
    import shlex

    import asyncssh

    from backend.hosts.ssh_link import HostUnreachableError, SshLink

    link = SshLink(host)
    try:
        conn = await link.connection()
        process = await conn.create_process(shlex.join(argv), stdin=asyncssh.DEVNULL,
                                            encoding=None)

        async def copy(reader: asyncssh.SSHReader[bytes], fd: int) -> None:
            while chunk := await reader.read(65536):
                os.write(fd, chunk)

        await asyncio.gather(copy(process.stdout, 1), copy(process.stderr, 2))
        await process.wait_closed()
        status = process.exit_status
        return status if isinstance(status, int) else 255
    except (OSError, asyncssh.Error) as exc:
        raise HostUnreachableError(f"host {host.name}: the connection dropped: "
                                   f"{getattr(exc, 'reason', exc)}") from None
    finally:
        await link.close()


def stored_ssh_host(name: str, command: tuple[str, ...]) -> None:
    """`boxui ssh NAME`: when NAME is a stored SSH host and no machine is called that,
    open a session on the host (this does not return); else do nothing."""
    dirs = _dirs()
    if not (dirs.root / "hosts.toml").exists():
        return
    from backend.hosts.registry import load_hosts

    host = load_hosts(dirs).get(name)
    if host is None or host.kind == "libvirt" or dirs.machine_dir(name).exists():
        return
    ssh_to_host(host, command)
