from __future__ import annotations

from backend.errors import BoxuiError


class DriverError(BoxuiError):
    code = "driver"


class PortInUseError(DriverError):
    code = "port_in_use"
