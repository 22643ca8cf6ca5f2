"""Placeholder replaced by the service manager."""

from __future__ import annotations


class ServiceManager:
    def names(self) -> list[str]:
        raise NotImplementedError
