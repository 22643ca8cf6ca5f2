"""How many members each variant's pool keeps, and the memory they may use together.

A size comes from the template TOML (`pool = N` in a variant) unless `boxui pool set`
chose one, which is kept in `pools/sizes.json` (atomic) and wins: the TOML is the
user's file, never rewritten. The budget is `[pools] memory_budget_mib` in the state
dir's `daemon.toml`: members are idle guests holding real memory, so the user bounds it.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.atomic_write import atomic_write_text
from backend.state.command_journal import CONFIG_NAME
from backend.state.state_dir import StateDir
from backend.templates.layout import TemplateDir
from backend.templates.revision_store import template_ids
from backend.templates.template_spec import MAX_POOL, read_template

#: guest memory all members together may hold when `daemon.toml` does not say
DEFAULT_BUDGET_MIB = 2048
SIZES_FILE = "sizes.json"


def pools_root(dirs: StateDir) -> Path:
    return dirs.root / "pools"


def chosen_sizes(dirs: StateDir) -> dict[str, int]:
    """`boxui pool set`'s sizes, by `ID:ROLE`."""
    path = pools_root(dirs) / SIZES_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise BoxuiError(f"{path}: {exc}") from None
    sizes = raw.get("sizes") if isinstance(raw, dict) else None
    if not isinstance(sizes, dict) or not all(
            isinstance(v, int) and 0 <= v <= MAX_POOL for v in sizes.values()):
        raise BoxuiError(f"{path}: expected {{\"sizes\": {{\"ID:ROLE\": N}}}}")
    return {str(k): int(v) for k, v in sizes.items()}


def choose_size(dirs: StateDir, ref: str, size: int) -> None:
    sizes = chosen_sizes(dirs)
    sizes[ref] = size
    root = pools_root(dirs)
    root.mkdir(mode=0o700, exist_ok=True)
    atomic_write_text(root / SIZES_FILE, json.dumps({"sizes": sizes}, indent=2) + "\n")


def template_sizes(dirs: StateDir) -> dict[str, int]:
    """`pool = N` of each variant in each template's TOML (an unreadable one: none)."""
    sizes = {}
    for template_id in template_ids(dirs):
        try:
            config = read_template(TemplateDir.of(dirs, template_id).spec)
        except (BoxuiError, OSError):
            continue
        sizes.update({f"{template_id}:{v.role}": v.pool for v in config.variants if v.pool})
    return sizes


def desired_sizes(dirs: StateDir) -> dict[str, tuple[int, str]]:
    """`ID:ROLE` -> (members wanted, where that number comes from: "toml" or "set")."""
    wanted = {ref: (n, "toml") for ref, n in template_sizes(dirs).items()}
    wanted.update({ref: (n, "set") for ref, n in chosen_sizes(dirs).items()})
    return wanted


def memory_budget_mib(dirs: StateDir) -> int:
    path = dirs.root / CONFIG_NAME
    try:
        with path.open("rb") as file:
            section = tomllib.load(file).get("pools", {})
    except FileNotFoundError:
        return DEFAULT_BUDGET_MIB
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BoxuiError(f"{path}: {exc}") from None
    unknown = set(section) - {"memory_budget_mib"} if isinstance(section, dict) else {"?"}
    if unknown:
        raise BoxuiError(f"{path}: [pools] has unknown keys: {', '.join(sorted(unknown))}")
    budget = section.get("memory_budget_mib", DEFAULT_BUDGET_MIB)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise BoxuiError(f"{path}: [pools] memory_budget_mib must be a whole number >= 0")
    return budget
