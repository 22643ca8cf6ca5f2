"""`ssh://[USER@]HOST[:PORT]`: where an SSH host is, checked before it is stored.

A host part becomes an argument of `ssh` and a name asyncssh resolves, so it is held to
hostname characters: nothing that could be read as an option or a second destination.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from backend.errors import BoxuiError

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}|\[[0-9A-Fa-f:.]+\]")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


class BadHostAddressError(BoxuiError):
    code = "invalid_request"


@dataclass(frozen=True)
class SshAddress:
    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"


def parse_ssh_address(text: str) -> SshAddress:
    """The parts of an `ssh://` address, or a one-line reason it is not one."""
    if not text.startswith("ssh://"):
        raise BadHostAddressError(f"{text!r}: use ssh://[USER@]HOST[:PORT]")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise BadHostAddressError(f"{text!r}: the port must be 1-65535") from None
    host = parts.hostname or ""
    bracketed = f"[{host}]" if ":" in host else host
    if (parts.path not in ("", "/") or parts.query or parts.fragment or parts.password
            or not _HOST.fullmatch(bracketed) or port == 0):
        raise BadHostAddressError(f"{text!r}: use ssh://[USER@]HOST[:PORT]")
    user = parts.username
    if user is not None and not _USER.fullmatch(user):
        raise BadHostAddressError(f"{text!r}: {user!r} is not a user name")
    return SshAddress(host=host, user=user, port=port)
