"""Fresh kernel RNG state for a guest restored from a shared snapshot.

Every guest restored from one snapshot resumes with the same kernel CRNG state, so
right after restore two clones would read the same bytes from /dev/urandom. boxui
sends each restored guest a tiny program carrying 64 bytes of host entropy that adds
them to the input pool and forces an immediate CRNG reseed (see
`backend.guest.rng_reseed_elf`). It needs root in the guest, which boxui's guest gives;
a guest that refuses keeps working but is reported as not re-seeded. What this cannot
change: the guest's SSH host key and any randomness user space drew before the
snapshot (dropbear's own pool included) stay shared.
"""

from __future__ import annotations

import io
from pathlib import Path

from backend.errors import BoxuiError
from backend.guest.errors import GuestImageError
from backend.guest.machine_seed import load_machine_keys
from backend.guest.rng_reseed_elf import reseed_program
from backend.ssh_access import exec_command

RESEED_TIMEOUT = 30.0
_SCRIPT = ('umask 077; f=/run/.boxui-reseed-$$; cat > "$f" && chmod 700 "$f" && "$f"; '
           'rc=$?; rm -f "$f"; exit $rc')
_EXIT_MEANING = {2: "cannot open /dev/urandom", 3: "RNDADDENTROPY refused",
                 4: "RNDRESEEDCRNG refused"}


async def reseed_guest(port: int, machine_dir: Path) -> str | None:
    """Re-seed the guest's kernel RNG; return None on success, else why it was not."""
    try:
        keys = load_machine_keys(machine_dir)
    except GuestImageError as exc:
        return str(exc)
    out = io.BytesIO()
    try:
        status = await exec_command(port, keys, machine_dir, ["sh", "-c", _SCRIPT], out, out,
                                    stdin=reseed_program(), timeout=RESEED_TIMEOUT)
    except BoxuiError as exc:
        return str(exc)
    if status == 0:
        return None
    said = out.getvalue().decode(errors="replace").strip()
    return _EXIT_MEANING.get(status, f"exit {status}" + (f": {said[:120]}" if said else ""))
