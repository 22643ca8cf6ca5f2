"""Where a command chosen for another host runs, by that host's kind.

- A remote boxui: commands that change things reach its daemon's API through SSH (the
  command's own code, with the API client `ensure_daemon` gives it); commands that only
  read run there as its own `boxui` (relayed, same output); so does `create --template`,
  since the template is the remote's and is resolved there; `ssh` opens a session there
  that runs its `boxui ssh`.
- A libvirt host: libvirt is asked directly (`libvirt_cmds`), or the command says in one
  line that such a host cannot do it.
- A plain host runs no machines: one line.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.hosts.registry import HostDef


def on_host(host: HostDef, path: str, params: dict[str, object], *, relay: bool,
            args: list[str], here: Callable[[], object]) -> object:
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
    if relay or (path == "create" and params.get("template_ref") is not None):
        sys.exit(relay_to_remote(host, strip_host_option(args)))
    if path == "ssh":
        ssh_to_host(host, (shlex.join(["boxui", "ssh", name, *command]),), tty=True)
    return here()
