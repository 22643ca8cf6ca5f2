"""The API's unix socket, bound and listening before the API itself exists.

A module of its own, free of the web stack: a daemon binds the socket the moment it
holds the state dir's lock, so a client connecting while it re-adopts machines (and
only then loads the API) waits in the listen backlog instead of being refused.

The socket is created by boxui, not uvicorn (which would make it 0666): bound under a
0177 umask inside the 0700 run dir and then set to 0600, so only its owner can connect.
A leftover socket of a killed daemon is removed first; that is safe because the caller
holds the state dir's lock, so no live daemon can own it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from backend.state.state_dir import StateDir

#: connections that may wait while the daemon starts (a connect beyond them blocks)
BACKLOG = 128


def bind_api_socket(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(BACKLOG)  # clients may connect (and wait) from here on
    return sock


def listen_on_api_socket(dirs: StateDir) -> socket.socket:
    """Bind the state dir's API socket; the caller holds the state dir's lock."""
    dirs.ensure_api_socket_dir()
    return bind_api_socket(dirs.api_socket)
