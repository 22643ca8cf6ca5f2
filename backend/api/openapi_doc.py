"""Write the served OpenAPI document to docs/openapi.json: `python -m backend.api.openapi_doc`.

The document is committed so that API changes show up in review as a diff; a test
checks that the committed file is exactly what the app serves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backend.api.app import openapi_document
from backend.state.atomic_write import atomic_write_text


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "docs" / \
        "openapi.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, render())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
