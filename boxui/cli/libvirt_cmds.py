"""The machine commands on a libvirt host (`--host LIBVIRTHOST`): libvirt asked directly.

libvirtd supervises the domains there, so these commands open a libvirt connection for
as long as they run, as virsh does, rather than reach a boxui daemon (the reasoning is
`backend.hosts.libvirt_machines`'s). They print what the local commands print; what such
a host cannot do is one line, `boxui: HOST is a libvirt host: ...`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from backend.errors import BoxuiError
from backend.hosts.libvirt_machines import LibvirtMachines, MachineView
from backend.hosts.registry import HostDef
from backend.state.state_dir import open_state_dir

if TYPE_CHECKING:
    from backend.state.machine_spec import MachineSpec

T = TypeVar("T")
Params = dict[str, Any]


class NotOnLibvirtError(BoxuiError):
    code = "libvirt"


#: create's options a libvirt host refuses, each with why
_CREATE_REFUSALS = (
    ("template_ref", "--template", "templates restore memory snapshots, which boxui does "
     "not take to libvirt domains"),
    ("kernel", "--kernel/--initrd", "its machines boot boxui's default guest image"),
    ("disk_image", "--disk-image", "its machines boot boxui's default guest image"),
    ("disk", "--disk", "its machines boot boxui's default guest image"),
    ("autostart", "--autostart", "libvirt starts domains at boot itself (virsh autostart)"),
    ("liveness_exec", "--liveness-exec", "liveness probes need a boxui daemon watching"),
    ("liveness_port", "--liveness-port", "liveness probes need a boxui daemon watching"),
    ("provision", "--provision", "provision scripts are run by a boxui daemon"),
    ("mounts", "--mount", "shared folders (virtio-9p) are not set up on libvirt domains"),
)
#: commands a libvirt host cannot do, with why
_REFUSED = {
    "events": "boxui keeps no event log there; libvirt's events show live in the app",
    "port add": "a domain's forwards are fixed while it runs: give --port at create",
    "port rm": "a domain's forwards are fixed while it runs: give --port at create",
    "port ls": "`boxui info --host HOST NAME` shows a machine's forwards",
    "image ls": "its machines boot boxui's default guest image from this state dir "
                "(`boxui image ls` lists this host's images)",
    "service ls": "services need a boxui daemon, which a libvirt host does not run",
    "daemon status": "libvirtd supervises its domains, no boxui daemon "
                     "(`boxui host ls` shows whether it answers)",
}


def _refuse(host: HostDef, what: str) -> NotOnLibvirtError:
    return NotOnLibvirtError(f"{host.name} is a libvirt host: {what}")


def _on(host: HostDef, work: Callable[[LibvirtMachines], Awaitable[T]]) -> T:
    async def run() -> T:
        async with LibvirtMachines(open_state_dir(), host) as machines:
            return await work(machines)

    return asyncio.run(run())


def run_on_libvirt(host: HostDef, path: str, params: Params) -> int:
    """Run command `path` with its parsed `params` on libvirt host `host`; its exit code."""
    if path in _REFUSED:
        raise _refuse(host, f"{path} does not apply there: "
                      + _REFUSED[path].replace("HOST", host.name))
    handler = _HANDLERS.get(path)
    if handler is None:
        raise _refuse(host, f"{path} is not available there")
    return handler(host, params)


def _line(view: MachineView, how: str | None = None) -> str:
    """A machine as the local commands print it."""
    port = f", ssh on 127.0.0.1:{view.ssh_port}" if view.ssh_port and \
        view.state.value in ("ready", "busy", "booting") else ""
    reason = f" ({view.domain.reason})" if view.domain.reason and not how else ""
    said = f": {how}" if how else ""
    return f"{view.name}: {view.state.value}{reason}{port}{said}"


def _show(view: MachineView, as_json: bool, how: str | None = None) -> int:
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(view.as_json())
    else:
        click.echo(_line(view, how))
    return 0


def _spec(host: HostDef, params: Params) -> MachineSpec:
    from backend.state.machine_spec import MachineSpec

    for key, option, why in _CREATE_REFUSALS:
        if params.get(key):
            raise _refuse(host, f"{option} is not available there ({why})")
    if params.get("image", "default") != "default":
        raise _refuse(host, "--image is not available there (its machines boot boxui's "
                      "default guest image)")
    if params.get("restart_policy", "never") != "never":
        raise _refuse(host, "--restart is not available there (libvirt supervises its "
                      "domains; boxui applies no restart policy to them)")
    return MachineSpec(name=params["name"], vcpus=params.get("vcpus") or 1,
                       memory_mib=params.get("memory_mib") or 256,
                       accel=params.get("accel", "auto"), ports=params.get("ports") or [])


def _create(host: HostDef, params: Params) -> int:
    spec = _spec(host, params)
    start = bool(params.get("start", True))
    view = _on(host, lambda m: m.create(spec, start=start))
    return _show(view, params.get("as_json", False))


def _start(host: HostDef, params: Params) -> int:
    return _show(_on(host, lambda m: m.start(params["name"])), params.get("as_json", False))


def _stop(host: HostDef, params: Params) -> int:
    view, how = _on(host, lambda m: m.stop(params["name"], force=params.get("force", False)))
    as_json = params.get("as_json", False)
    return _show(view, as_json, None if as_json else how)


def _restart(host: HostDef, params: Params) -> int:
    return _show(_on(host, lambda m: m.restart(params["name"])), params.get("as_json", False))


def _rm(host: HostDef, params: Params) -> int:
    name = params["name"]
    _on(host, lambda m: m.delete(name, force=params.get("force", False)))
    click.echo(f"deleted {name}")
    return 0


def _ls(host: HostDef, params: Params) -> int:
    from boxui.cli.output import MACHINE_HEADERS, emit_json, table

    views = _on(host, lambda m: m.every())
    if params.get("as_json"):
        emit_json([view.as_json() for view in views])
        return 0
    if not views:
        click.echo(f"no machines on host {host.name} ({host.address})")
        return 0
    rows = []
    for view in views:
        domain, record = view.domain, view.local.record if view.local else None
        reason = domain.reason if domain.boxui else \
            "; ".join(filter(None, ["not created by boxui", domain.reason]))
        rows.append([view.name, view.state.value, str(domain.vcpus or "-"),
                     f"{domain.memory_mib} MiB" if domain.memory_mib else "-",
                     record.accel if record else "-", str(view.ssh_port or "-"), reason])
    click.echo(table(MACHINE_HEADERS, rows))
    return 0


def _info(host: HostDef, params: Params) -> int:
    view = _on(host, lambda m: m.view(params["name"]))
    if params.get("as_json"):
        return _show(view, True)
    domain, local = view.domain, view.local
    lines = [("name", view.name), ("state", view.state.value), ("reason", domain.reason),
             ("host", f"{host.name} (libvirt, {host.address})"), ("uuid", domain.uuid),
             ("boxui's", "yes" if domain.boxui else "no (shown, started and stopped; "
              "deleted only with --force)"),
             ("vcpus", str(domain.vcpus or "-")),
             ("memory_mib", str(domain.memory_mib or "-"))]
    if local is not None:
        record = local.record
        forwards = ", ".join(f"127.0.0.1:{port} -> {guest}"
                             for guest, port in record.ports.items())
        lines += [("accel", record.accel), ("ssh_port", str(view.ssh_port)),
                  ("forwards", forwards), ("boot_id", record.boot_id),
                  ("console log", domain.mark.console_log or "" if domain.mark else ""),
                  ("files", str(local.directory))]
    click.echo("\n".join(f"{key + ':':<16}{value}" for key, value in lines if value))
    return 0


def _exec(host: HostDef, params: Params) -> int:
    if params.get("idempotent"):
        raise _refuse(host, "--idempotent is not available there (commands are recorded "
                      "and run again only by a boxui daemon)")
    from backend.guest.machine_seed import load_machine_keys
    from backend.supervision.ssh_access import exec_command

    name, argv = params["name"], list(params["command"])

    async def run(machines: LibvirtMachines) -> int:
        local, port = await machines.login(name)
        keys = load_machine_keys(local.directory)
        return await exec_command(port, keys, local.directory, argv, sys.stdout.buffer,
                                  sys.stderr.buffer, timeout=params.get("timeout"))

    code = _on(host, run)
    sys.stdout.flush()
    return code


def _ssh(host: HostDef, params: Params) -> int:
    from backend.guest.machine_seed import load_machine_keys
    from backend.supervision.ssh_access import find_ssh, ssh_argv, write_known_hosts

    local, port = _on(host, lambda m: m.login(params["name"]))
    keys = load_machine_keys(local.directory)
    write_known_hosts(local.directory, keys, port)
    command = list(params.get("command") or ()) or None
    argv = ssh_argv(local.directory, keys, port, command, find_ssh())
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _logs(host: HostDef, params: Params) -> int:
    if params.get("follow") or params.get("provision"):
        raise _refuse(host, "logs --follow and --provision are not available there "
                      "(`boxui logs --host HOST NAME` prints the console log so far)"
                      .replace("HOST", host.name))
    async def read(machines: LibvirtMachines) -> bytes:
        view = await machines.view(params["name"])
        mark = view.domain.mark
        if view.local is None or mark is None or not mark.console_log:
            raise _refuse(host, f"{view.name} has no console log here (it was not "
                          "created by this boxui; virsh console reaches it)")
        return await machines.console_text(mark.console_log)  # empty: never booted

    sys.stdout.buffer.write(_on(host, read))
    sys.stdout.flush()
    return 0


_HANDLERS: dict[str, Callable[[HostDef, Params], int]] = {
    "create": _create, "start": _start, "stop": _stop, "restart": _restart, "rm": _rm,
    "ls": _ls, "info": _info, "exec": _exec, "ssh": _ssh, "logs": _logs,
}
