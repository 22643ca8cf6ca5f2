"""Where a command chosen for another host runs, by that host's kind.

Every command but those about this machine's boxui (`root.LOCAL_COMMANDS`) comes here
when another host is chosen; none of them ever falls back to acting locally.

- A remote boxui: the commands in API_ROUTED run their own code here with the API client
  `ensure_daemon` gives them (the remote daemon's socket, forwarded over SSH): they need
  this terminal (`exec`'s stdin) or are the ones timed in loops. Every other command runs
  there as the remote's own `boxui` (relayed: same output, same exit code), so whatever
  it reads (state dir, templates, images, pools, cells) is the remote's. `create
  --template` is relayed too: the template is resolved there. This machine's files that
  a command reads or writes once (`cp`, `run --input/--export`, `create --provision`) go
  through a staging dir there (`remote_files`); what names a file or folder the remote
  would go on using (a shared folder, a kernel read at each boot) is refused by
  HOST_PATH_OPTIONS in one line naming the option.
- A libvirt host: libvirt is asked directly (`libvirt_cmds`), or the command says in one
  line, naming the host and its kind, that such a host cannot do it.
- A plain host runs no machines: one line.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.hosts.registry import HostDef

#: commands whose own code runs here against the remote daemon's forwarded API
API_ROUTED = frozenset({"create", "start", "stop", "restart", "rm", "exec", "ssh",
                        "port add", "port rm"})


def _given(value: object) -> bool:
    return value not in (None, (), [], False)


def _is_file_source(value: object) -> bool:
    """`template build FILE|ID`: a path (as its own check has it), not an id."""
    text = str(value or "")
    return "/" in text or text.endswith(".toml") or text in (".", "..")


#: per command: (its parameter, the option as typed, whether a value names a host path)
HOST_PATH_OPTIONS: dict[str, tuple[tuple[str, str, Callable[[object], bool]], ...]] = {
    "create": (("kernel", "--kernel", _given), ("initrd", "--initrd", _given),
               ("disk_image", "--disk-image", _given), ("mounts", "--mount", _given)),
    "template build": (("source", "FILE", _is_file_source),),
}
#: why each is refused: what the remote would go on reading, not a copy made once
_WHY_REFUSED = {
    "--mount": "a shared folder is a folder of the host running the machine's QEMU, and "
               "host {host} cannot share one of this machine's",
    "--kernel": "the machine boots from that file each time it starts",
    "--initrd": "the machine boots from that file each time it starts",
    "--disk-image": "the machine runs on that very file",
    "FILE": "a recipe names further files beside it, which host {host} would read as its own",
}
#: commands that cannot act on a remote boxui at all, with why
REMOTE_REFUSED = {
    "ssh-config": "its entries point at 127.0.0.1 ports of that host, not of this one; "
                  "`boxui ssh --host HOST NAME` opens a session",
}


def _refusal(message: str) -> Exception:
    from backend.hosts.remote_boxui import RemoteBoxuiError

    return RemoteBoxuiError(message)


def check_remote(host: HostDef, path: str, params: dict[str, object]) -> None:
    """Refuse, in one line, what a remote boxui cannot be given from here."""
    if path in REMOTE_REFUSED:
        raise _refusal(f"{path} --host {host.name}: "
                       + REMOTE_REFUSED[path].replace("HOST", host.name))
    for param, option, names_a_path in HOST_PATH_OPTIONS.get(path, ()):
        if names_a_path(params.get(param)):
            why = _WHY_REFUSED[option].format(host=host.name)
            raise _refusal(f"{path} {option} names a file of this machine, and {why}: "
                           f"copy it to host {host.name} and run `boxui {path}` there "
                           f"(ssh {host.name}), or leave {option} out")


def on_host(host: HostDef, path: str, params: dict[str, object], *, args: list[str],
            here: Callable[[], object]) -> object:
    """Run command `path` (`create`, `port ls`, ...) with its parsed `params` on `host`;
    `args`: its command line as given; `here`: the command's own code."""
    from backend.hosts.remote_boxui import RemoteBoxuiError
    from boxui.cli.hosts import relay_to_remote, ssh_to_host, stored_ssh_host, strip_host_option

    name, command = str(params.get("name")), params.get("command") or ()
    assert isinstance(command, tuple)
    if path == "ssh":  # `boxui ssh HOSTNAME` stays a session on that host, as ever
        stored_ssh_host(name, command)
    if host.kind == "libvirt":
        try:  # libvirt-python is optional (the `libvirt` extra)
            from boxui.cli.libvirt_cmds import run_on_libvirt
        except ImportError as exc:
            raise RemoteBoxuiError(f"host {host.name} is a libvirt host, and the libvirt "
                                   f"driver is not available here ({exc})") from None
        sys.exit(run_on_libvirt(host, path, params))
    if host.kind == "plain":
        raise RemoteBoxuiError(f"host {host.name} is a plain host: it runs no machines "
                               f"boxui manages (boxui ssh {host.name} opens a session there)")
    check_remote(host, path, params)
    if path in ("cp", "run", "create"):
        _with_files(host, path, params, args, here)
    if path not in API_ROUTED or (path == "create" and params.get("template_ref") is not None):
        sys.exit(relay_to_remote(host, strip_host_option(args)))
    if path == "ssh":
        ssh_to_host(host, (shlex.join(["boxui", "ssh", name, *command]),), tty=True)
    return here()


def _with_files(host: HostDef, path: str, params: dict[str, object], args: list[str],
                here: Callable[[], object]) -> None:
    """`cp`, `run --input/--export` and `create --provision` on a remote boxui, through
    a staging dir there (`remote_files`); returns only when there is nothing to move."""
    if path == "cp":
        from boxui.cli.remote_files import cp_on_host

        sys.exit(cp_on_host(host, bool(params["recursive"]), str(params["src"]),
                            str(params["dst"])))
    if path == "run" and (params.get("inputs") or params.get("exports")):
        from boxui.cli.remote_files import run_on_host

        sys.exit(run_on_host(host, params, args))
    scripts = params.get("provision")
    if path == "create" and scripts:
        from boxui.cli.hosts import relay_to_remote, strip_host_option
        from boxui.cli.remote_files import RemoteStage, rewrite_options, stage_provision

        assert isinstance(scripts, tuple)
        with RemoteStage(host) as stage:
            params["provision"] = staged = stage_provision(stage, scripts)
            if params.get("template_ref") is None:
                here()  # the remote daemon copies the scripts in as it creates the machine
                sys.exit(0)
            sys.exit(relay_to_remote(host, rewrite_options(
                strip_host_option(args), {"--provision": [str(p) for p in staged]})))
