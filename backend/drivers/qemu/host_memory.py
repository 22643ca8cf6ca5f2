"""Host memory a QEMU process may take beyond what its guest touches: transparent huge pages.

QEMU madvises guest RAM and TCG's translation buffer MADV_HUGEPAGE, so on a host whose
THP mode is `madvise` (Debian's default) or `always`, the first byte a guest touches in
a 2 MiB range makes the host back all of it. Measured on an idle default guest (256 MiB,
TCG, see bench/memory.py): guest RAM 98 MiB resident with THP, 92 MiB without; the
translation buffer rounds up the same way.

Under TCG that is all cost: the emulated MMU translates every guest access through its
own 4 KiB-page TLB, so huge host pages buy almost nothing. Under KVM they shorten the
two-level page walk of every guest TLB miss, which is worth the memory, so KVM keeps
them.

`PR_SET_THP_DISABLE` is per process, inherited across fork and kept across execve, and
QEMU has no option of its own for it; so it is set in the child between fork and exec.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable

from backend.state.accelerator import Accel

_PR_SET_THP_DISABLE = 41


def _disable_thp() -> None:
    """In the child, before exec: no transparent huge pages for this process."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)


def preexec_for(accel: Accel) -> Callable[[], None] | None:
    """What to run in QEMU's child process before exec, for this accelerator."""
    return _disable_thp if accel == "tcg" else None
