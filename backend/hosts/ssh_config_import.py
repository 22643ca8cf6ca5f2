"""The `Host` entries of `~/.ssh/config` that `boxui host import` offers: concrete names
only (no patterns), each added as `ssh://ALIAS` so that ssh's own settings for it
(HostName, User, Port, IdentityFile) keep applying when boxui connects."""

from __future__ import annotations

import re
from pathlib import Path

_PATTERN_CHARS = re.compile(r"[*?!]")


def ssh_config_aliases(path: Path) -> list[str]:
    """Every concrete `Host` alias in `path` (Include is not followed), in file order."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    aliases: list[str] = []
    for line in lines:
        words = line.strip().replace("=", " ", 1).split()
        if len(words) < 2 or words[0].lower() != "host":
            continue
        for alias in words[1:]:
            if not _PATTERN_CHARS.search(alias) and alias not in aliases:
                aliases.append(alias)
    return aliases
