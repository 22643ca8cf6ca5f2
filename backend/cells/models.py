"""What a client asks of a cell, and the lines of its NDJSON answer."""

from __future__ import annotations

import posixpath
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from backend.state.cell_projection import CellView
from backend.state.machine_spec import MAX_ENV, check_env


def _absolute_guest_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value or value.endswith("/"):
        raise ValueError(f"{value!r}: a guest path must be absolute and name a file")
    return posixpath.normpath(value)


class CellInput(BaseModel):
    """A host file copied into the guest before the command runs."""

    host_path: str = Field(description="absolute path of a file on the daemon's host")
    guest_path: str

    _guest = field_validator("guest_path")(_absolute_guest_path)


class CellExport(BaseModel):
    """A guest file copied out after the command, into `host_dir` under its own name."""

    guest_path: str
    host_dir: str = Field(description="absolute path of an existing directory on the host")

    _guest = field_validator("guest_path")(_absolute_guest_path)


class CellRequest(BaseModel):
    argv: list[str] = Field(min_length=1, description="the command and its arguments")
    name: str | None = Field(default=None, description="default: cell-<short id>")
    template: str | None = Field(default=None, description="ID[:ROLE]: restore its snapshot")
    image: str | None = Field(default=None, description="an OS image: a cold boot from it")
    timeout: float | None = Field(default=None, gt=0, description="seconds for the command")
    env: dict[str, str] = Field(default_factory=dict, max_length=MAX_ENV)
    inputs: list[CellInput] = Field(default_factory=list, max_length=256)
    exports: list[CellExport] = Field(default_factory=list, max_length=256)
    keep: bool = Field(default=False, description="leave the machine when the cell ends")

    _env = field_validator("env")(check_env)

    @model_validator(mode="after")
    def _one_source(self) -> CellRequest:
        if self.template is not None and self.image is not None:
            raise ValueError("template and image do not go together")
        return self


class CellLine(BaseModel):
    """One line of `POST /v1/cells`: `step` (a cell event), `output` (bytes of the
    command's stdout or stderr as they came), then one `result` or `error`."""

    type: Literal["step", "output", "result", "error"]
    step: str | None = None
    message: str | None = None
    stream: Literal["stdout", "stderr"] | None = None
    data_b64: str | None = None
    cell: CellView | None = None
    code: str | None = None
