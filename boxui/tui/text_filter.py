"""What `/` types, as k9s reads it: plain text matches anywhere (case-insensitive), a
leading `!` inverts, a leading `~` makes the rest a regular expression (`!~` both).

One parser for every list and log pane, so a filter means the same thing wherever it is
typed; an invalid expression is reported, not raised, because it is typed one key at a
time and is invalid half-way through more often than not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TextFilter:
    text: str = ""
    inverted: bool = False
    pattern: re.Pattern[str] | None = None
    error: str | None = None

    @classmethod
    def parse(cls, typed: str) -> TextFilter:
        body = typed.strip()
        inverted = body.startswith("!")
        if inverted:
            body = body[1:]
        if body.startswith("~"):
            try:
                return cls(body, inverted, re.compile(body[1:], re.IGNORECASE))
            except re.error as exc:
                return cls(body, inverted, error=f"not a regular expression: {exc}")
        return cls(body.lower(), inverted)

    @property
    def active(self) -> bool:
        return bool(self.text) and self.error is None

    def matches(self, *texts: str) -> bool:
        """True when any of `texts` matches (all of them fail, when inverted); an empty
        or invalid filter keeps everything."""
        if not self.active:
            return True
        if self.pattern is not None:
            found = any(self.pattern.search(t) for t in texts)
        else:
            found = any(self.text in t.lower() for t in texts)
        return found != self.inverted

    def describe(self) -> str:
        """For a pane's title: `/!~^db`."""
        return f"/{'!' if self.inverted else ''}{self.text}" if self.text else ""
