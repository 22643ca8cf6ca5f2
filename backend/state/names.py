"""Machine names: the one rule that keeps every path we build inside the state dir."""

from __future__ import annotations

import re

from backend.errors import InvalidNameError

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NAME_RULE = "1-63 characters of a-z, 0-9 and '-', not starting with '-'"


def validate_name(name: object) -> str:
    """Return `name` if it is a valid machine name, else raise with a readable reason.

    A name becomes a directory name, a QEMU `-name` and a hostname, so the rule is
    deliberately narrow: nothing that could be a path (`/`, `..`), an option (`-x`),
    or a control character ever gets through.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name)
        if len(shown) > 40:
            shown = shown[:37] + "...'"
        raise InvalidNameError(f"invalid machine name {shown}: use {NAME_RULE}")
    return name


def is_valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None
