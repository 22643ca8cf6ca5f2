"""A guest port published on the host, as `HOST:GUEST[/udp]` or just `GUEST[/udp]` (host
port picked at each boot, which is what lets N replicas of a service publish the same
guest port)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Protocol = Literal["tcp", "udp"]


class PortMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    guest: int = Field(ge=1, le=65535)
    #: None: a free port on 127.0.0.1 is picked at each boot
    host: int | None = Field(default=None, ge=1024, le=65535)
    protocol: Protocol = "tcp"

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """`8080:80`, `80`, `5353:53/udp`; raises ValueError with a readable reason."""
        ports, slash, protocol = text.partition("/")
        host, sep, guest = ports.rpartition(":")
        try:
            if slash and protocol not in ("tcp", "udp"):
                raise ValueError(protocol)
            return cls(guest=int(guest), host=int(host) if sep else None,
                       protocol="udp" if protocol == "udp" else "tcp")
        except ValueError as exc:
            raise ValueError(f"invalid port mapping {text!r}: use [HOST:]GUEST[/udp] "
                             "(host 1024-65535, guest 1-65535)") from exc

    @property
    def key(self) -> str:
        """How the runtime record names the forward: `80`, or `53/udp`."""
        return forward_key(self.guest, self.protocol)

    def __str__(self) -> str:
        text = f"{self.host}:{self.guest}" if self.host is not None else str(self.guest)
        return text + ("/udp" if self.protocol == "udp" else "")


def forward_key(guest: int, protocol: Protocol) -> str:
    return str(guest) if protocol == "tcp" else f"{guest}/udp"
