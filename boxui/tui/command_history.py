"""The `:` command line's history, kept in the state dir across sessions, as a shell
keeps its own: one command a line, oldest first, the newest `MAX_ENTRIES` only.

Commands name machines, so the file is the user's alone (0600, as the state dir is
0700). It is rewritten whole and atomically after each command, without fsyncs: a power
cut may cost the last command, never the file. An unreadable file starts an empty
history, which the next command then replaces: a history is no reason to refuse to open
the app.
"""

from __future__ import annotations

from pathlib import Path

from backend.state.atomic_write import atomic_write_bytes

HISTORY_FILE = "command-history"
MAX_ENTRIES = 500


def history_path(home: Path) -> Path:
    return home / HISTORY_FILE


def load_history(home: Path) -> list[str]:
    """The saved commands, oldest first; [] when there are none or they cannot be read."""
    try:
        text = history_path(home).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line for line in text.splitlines() if line.strip()][-MAX_ENTRIES:]


def save_history(home: Path, entries: list[str]) -> None:
    """Replace the file with the newest `MAX_ENTRIES`; raises `StorageError`."""
    kept = [e for e in entries if e.strip() and "\n" not in e][-MAX_ENTRIES:]
    atomic_write_bytes(history_path(home), "".join(f"{e}\n" for e in kept).encode(),
                       0o600, durable=False)
