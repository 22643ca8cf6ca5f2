"""What `boxui run` exits with for a finished cell, and the line it prints about it.

Both clients need it, the Python CLI and the daemon's side of the native one (which
cannot import the CLI), so it lives here, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.state.cell_projection import CellView

#: the exit code of a command that ran past --timeout, as timeout(1) has it
TIMED_OUT = 124
#: Ctrl-C, as a shell reports SIGINT
INTERRUPTED = 130


def exit_status(cell: CellView) -> tuple[int, str | None]:
    """The command's exit code; a cell that failed around it says why (the line, without
    `boxui: `) and exits 1, or 124 past its timeout."""
    if cell.outcome == "succeeded" and cell.reason is None:
        return 0, None
    if cell.reason is None and cell.exit_code is not None:
        return cell.exit_code, None
    message = f"cell {cell.name}: {cell.reason or cell.outcome}"
    if cell.outcome == "timed_out":
        return TIMED_OUT, message
    return (cell.exit_code if cell.exit_code not in (None, 0) else 1), message


def cancelled_line(cell: CellView) -> str:
    """What a cell cancelled by its client's Ctrl-C says once the daemon confirmed it."""
    return f"cell {cell.name} cancelled; its machine was " + \
        ("kept" if cell.machine_kept else "destroyed")
