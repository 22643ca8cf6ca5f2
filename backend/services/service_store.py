"""`services/<name>.json`: each service's spec and desired replicas, written atomically.

A file that cannot be read is reported and left alone (never overwritten), like a broken
machine: the user may want to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from backend.errors import SpecError
from backend.services.service_spec import (
    ServiceNotFoundError,
    ServiceSpec,
    validate_service_name,
)
from backend.state.atomic_write import atomic_write_text, fsync_dir
from backend.state.state_dir import StateDir
from backend.state.validation_text import describe_validation_error

SUFFIX = ".json"


class ServiceStore:
    def __init__(self, dirs: StateDir) -> None:
        self.root = dirs.services

    def path(self, name: str) -> Path:
        return self.root / f"{validate_service_name(name)}{SUFFIX}"

    def save(self, spec: ServiceSpec) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        atomic_write_text(self.path(spec.name), spec.model_dump_json(indent=2) + "\n")

    def load(self, name: str) -> ServiceSpec:
        path = self.path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ServiceNotFoundError(name) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(path, f"cannot read: {exc}") from None
        try:
            spec = ServiceSpec.model_validate_json(text)
        except ValidationError as exc:
            raise SpecError(path, describe_validation_error(exc)) from None
        if spec.name != name:
            raise SpecError(path, f"name {spec.name!r} does not match the file name")
        return spec

    def load_all(self) -> tuple[list[ServiceSpec], list[str]]:
        """Every readable service, and one line per file that is not."""
        specs: list[ServiceSpec] = []
        problems: list[str] = []
        try:
            entries = sorted(p for p in os.listdir(self.root) if p.endswith(SUFFIX))
        except FileNotFoundError:
            return [], []
        for entry in entries:
            try:
                specs.append(self.load(entry[: -len(SUFFIX)]))
            except (SpecError, ValueError) as exc:
                problems.append(f"service file {self.root / entry} ignored: {exc}")
        return specs, problems

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
        fsync_dir(self.root)
