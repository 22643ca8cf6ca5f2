"""Where warm pool members live on disk, for the pools that keep them and for what must
tell their processes from machines' (a claim, `boxui gc`, the doctor's orphan scan),
which sit below the pools and cannot import them."""

from __future__ import annotations

from pathlib import Path

from backend.state.state_dir import StateDir

#: a member's own bookkeeping file in its directory; it stays behind when a machine
#: claims the member
MEMBER_FILE = "member.json"
#: a directory name no machine can have (names start with a-z or 0-9)
RUN_SUBDIR = "_pools"


def members_root(dirs: StateDir) -> Path:
    return dirs.root / "pools" / "members"


def member_run_dir(dirs: StateDir, member: str) -> Path:
    """Beside the machines' run dirs (or their fallback under /tmp when the state dir is
    too deep for a socket path), so a claim moves it with one rename."""
    return dirs.machine_run_dir(member).parent / RUN_SUBDIR / member
