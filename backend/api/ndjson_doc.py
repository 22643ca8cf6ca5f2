"""The OpenAPI answer of a build route that streams NDJSON (templates, images)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from backend.api.errors import ERROR_RESPONSES

NDJSON = "application/x-ndjson"


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with its `$defs` references replaced by what they name: a schema under a
    media type other than JSON cannot add to the document's components."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, defs) for item in schema]
    return schema


def build_responses(line: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 (one `line` per progress step, then the result or error) and the errors."""
    schema = line.model_json_schema(mode="serialization")
    return {
        200: {"description": "the build's progress, then its result or error, one JSON "
              "object per line (a 200 says the build started, not that it succeeded)",
              "content": {NDJSON: {"schema": _inlined(schema, schema.get("$defs", {}))}}},
        **{status: ERROR_RESPONSES[status] for status in (400, 404, 422, 500)},
    }
