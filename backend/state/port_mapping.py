"""A guest port published on the host, as `HOST:GUEST` or just `GUEST` (host port picked
at each boot, which is what lets N replicas of a service publish the same guest port)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PortMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    guest: int = Field(ge=1, le=65535)
    #: None: a free port on 127.0.0.1 is picked at each boot
    host: int | None = Field(default=None, ge=1024, le=65535)

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """`8080:80` or `80`; raises ValueError with a readable reason."""
        host, sep, guest = text.rpartition(":")
        try:
            return cls(guest=int(guest), host=int(host) if sep else None)
        except ValueError as exc:
            raise ValueError(f"invalid port mapping {text!r}: use GUEST or HOST:GUEST "
                             "(host 1024-65535, guest 1-65535)") from exc

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}" if self.host is not None else str(self.guest)
