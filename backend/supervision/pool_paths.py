"""Where warm pool members live on disk, for the pools that keep them and for what must
tell their processes from machines' (a claim, `boxui gc`, the doctor's orphan scan),
which sit below the pools and cannot import them."""

from __future__ import annotations

import json
from pathlib import Path

from backend.errors import InvalidNameError
from backend.state.names import validate_name
from backend.state.state_dir import StateDir

#: a member's own bookkeeping file in its directory; it stays behind when a machine
#: claims the member
MEMBER_FILE = "member.json"
#: in a claimed member's run dir: the member's name, which its QEMU's command line keeps.
#: Written before the claim renames that dir to the machine's, so the same rename that
#: hands the machine the QEMU's sockets also tells it whose identity that QEMU carries
#: (its record says so only while it runs it; a process left behind needs it after)
LAUNCHED_FILE = "launched-as.json"
#: a directory name no machine can have (names start with a-z or 0-9)
RUN_SUBDIR = "_pools"


def members_root(dirs: StateDir) -> Path:
    return dirs.root / "pools" / "members"


def member_run_dir(dirs: StateDir, member: str) -> Path:
    """Beside the machines' run dirs (or their fallback under /tmp when the state dir is
    too deep for a socket path), so a claim moves it with one rename."""
    return dirs.machine_run_dir(member).parent / RUN_SUBDIR / member


def launched_member(dirs: StateDir, machine: str) -> str | None:
    """The warm pool member whose QEMU `machine` claimed last, as its run dir says; None
    if it never claimed one since its run dir was made (or the file is unreadable)."""
    try:
        name = json.loads((dirs.machine_run_dir(machine) / LAUNCHED_FILE).read_bytes())
        return validate_name(name["member"])
    except (OSError, ValueError, TypeError, KeyError, InvalidNameError):
        return None
