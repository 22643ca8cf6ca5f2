"""`template.toml`: a base image, a default profile and variants by role.

Like `machine.toml` it is written by people, so every mistake comes back as one line
naming the file and the key, and an unknown key is an error rather than a setting that
silently does nothing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.errors import InvalidNameError, SpecError
from backend.state.machine_spec import MAX_MEMORY_MIB, MAX_VCPUS
from backend.state.names import validate_name
from backend.state.validation_text import describe_validation_error

TEMPLATE_SCHEMA_VERSION = 1
DEFAULT_IMAGE = "default"

#: Guest profiles boxui can build. "minimal" is its own busybox + dropbear guest.
PROFILES: dict[str, str] = {"minimal": "busybox + dropbear, no disk"}


def _valid_name(value: str, what: str) -> str:
    try:
        return validate_name(value)
    except InvalidNameError:
        raise ValueError(f"invalid {what} {value!r}: use 1-63 of a-z, 0-9 and '-', "
                         "not starting with '-'") from None


def _known_profile(value: str) -> str:
    if value not in PROFILES:
        raise ValueError(f"unknown profile {value!r}; known: {', '.join(sorted(PROFILES))}")
    return value

#: the most machines one variant's warm pool may keep
MAX_POOL = 32


class TemplateVariant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: empty: `<template_id>-<role>`
    name: str = ""
    role: str
    #: empty: the template's profile
    profile: str = ""
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    memory_mib: int = Field(default=256, ge=64, le=MAX_MEMORY_MIB)
    data_disk_mib: int = Field(default=0, ge=0, le=0)  # the default guest has no disk yet
    #: extra kernel parameters; part of the snapshot, so a restore must ask for the same
    boot_args: str = ""
    #: warm pool: machines kept restored and idle for `create`/`run`/scale-up to claim
    #: (not part of what a build produces: changing it rebuilds nothing)
    pool: int = Field(default=0, ge=0, le=MAX_POOL)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        return _valid_name(value, "role")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return value and _valid_name(value, "variant name")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        return value and _known_profile(value)

    @field_validator("boot_args")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\n\r\0"):
            raise ValueError("must be a single line without NUL")
        return value


class TemplateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=TEMPLATE_SCHEMA_VERSION, ge=1)
    template_id: str
    #: the base image: "default" is the guest boxui builds from Debian packages; any
    #: other name is an OS image of the image store (`boxui image ls`), booted from a
    #: disk that the snapshot freezes with its memory (each clone gets an overlay on it)
    image: str = DEFAULT_IMAGE
    profile: str = "minimal"
    variants: tuple[TemplateVariant, ...] = Field(min_length=1)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > TEMPLATE_SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is newer than this boxui understands "
                             f"({TEMPLATE_SCHEMA_VERSION}); upgrade boxui")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return value if value == DEFAULT_IMAGE else _valid_name(value, "image")

    @property
    def os_image(self) -> str | None:
        """The OS image the variants boot from their own disk; None for the default."""
        return None if self.image == DEFAULT_IMAGE else self.image

    @field_validator("template_id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _valid_name(value, "template_id")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        return _known_profile(value)

    @field_validator("variants")
    @classmethod
    def _unique_roles(cls, value: tuple[TemplateVariant, ...]) -> tuple[TemplateVariant, ...]:
        roles = [v.role for v in value]
        dupes = sorted({r for r in roles if roles.count(r) > 1})
        if dupes:
            raise ValueError(f"role {dupes[0]!r} appears more than once")
        return value

    def variant_name(self, variant: TemplateVariant) -> str:
        name = variant.name or f"{self.template_id}-{variant.role}"
        return _valid_name(name, "variant name (<template_id>-<role> is too long)")

    def variant_profile(self, variant: TemplateVariant) -> str:
        return variant.profile or self.profile

    def variant(self, role: str) -> TemplateVariant:
        for candidate in self.variants:
            if candidate.role == role:
                return candidate
        roles = ", ".join(v.role for v in self.variants)
        raise KeyError(f"template {self.template_id!r} has no role {role!r} (roles: {roles})")


def parse_template(text: str, path: Path) -> TemplateConfig:
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, f"invalid TOML: {exc}") from None
    try:
        config = TemplateConfig.model_validate(raw)
        for variant in config.variants:
            config.variant_name(variant)
    except ValidationError as exc:
        raise SpecError(path, describe_validation_error(exc)) from None
    except ValueError as exc:
        raise SpecError(path, str(exc)) from None
    return config


def read_template(path: Path) -> TemplateConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, "file is missing") from None
    except UnicodeDecodeError as exc:
        raise SpecError(path, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(path, f"cannot read: {exc.strerror}") from None
    return parse_template(text, path)
