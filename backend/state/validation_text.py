"""Turn pydantic's multi-line validation reports into one line a user can act on."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif kind == "missing":
            parts.append(f"missing required key {loc!r}")
        else:
            msg = err["msg"]
            parts.append(f"key {loc!r}: {msg[0].lower() + msg[1:] if msg else kind}")
    return "; ".join(parts)
