"""Which host a command acts on, and its API client when that host is a remote boxui.

`--host NAME` (every command that talks to machines), else `BOXUI_HOST`, else the host
stored by `boxui host use`. For a remote boxui the client is an ordinary `DaemonClient`
over the remote's API socket forwarded through SSH (`backend.hosts.remote_boxui`): one
tunnel per process, kept while the command runs, so a command that makes two requests
(`stop`, then how it ended) pays for one SSH connection.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import TYPE_CHECKING

from backend.state.state_dir import StateDir, open_state_dir

if TYPE_CHECKING:
    from backend.hosts.registry import HostDef
    from backend.hosts.remote_boxui import ApiTunnel, KeptTunnel
    from boxui.daemon.client import DaemonClient

_chosen: str | None = None
_tunnel: ApiTunnel | KeptTunnel | None = None


def choose_host(name: str | None) -> None:
    """What `--host` said for this command (None: not given)."""
    global _chosen
    _chosen = name


def selected_remote(dirs: StateDir | None = None) -> HostDef | None:
    """The host this command acts on, or None for the local one. Cheap when no host was
    ever added or chosen: no TOML is read unless one is selected."""
    from backend.hosts.selection import CURRENT_FILE, HOST_ENV, LOCAL

    if _chosen is None and not os.environ.get(HOST_ENV):
        dirs = dirs or open_state_dir()
        if not (dirs.root / CURRENT_FILE).exists():
            return None
    from backend.hosts.registry import get_host, selected_host

    dirs = dirs or open_state_dir()
    name = selected_host(dirs, _chosen, dict(os.environ))
    return None if name == LOCAL else get_host(dirs, name)


def remote_daemon(host: HostDef) -> DaemonClient:
    """A client for `host`'s daemon, through the process's tunnel to it (the remote
    daemon started first if none ran there; said once on stderr, as locally)."""
    global _tunnel
    from boxui.daemon.client import DaemonClient

    if _tunnel is None or _tunnel.host != host:
        from backend.hosts.remote_boxui import open_tunnel

        close_tunnel()
        run_dir = open_state_dir().run
        run_dir.mkdir(mode=0o700, exist_ok=True)
        _tunnel = open_tunnel(host, run_dir / f"host-{host.name}.endpoint")
        endpoint = _tunnel.endpoint
        if endpoint is not None and endpoint.started:
            sys.stderr.write(f"started boxui daemon on {host.name}, pid {endpoint.pid}\n")
            sys.stderr.flush()
    pid = _tunnel.endpoint.pid if _tunnel.endpoint else None
    return DaemonClient(_tunnel.socket_path, pid, where=f"host {host.name}")


@atexit.register
def close_tunnel() -> None:
    global _tunnel
    if _tunnel is not None:
        tunnel, _tunnel = _tunnel, None
        tunnel.close()
