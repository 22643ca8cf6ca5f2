"""Following a cell the daemon runs (`boxui run`): post it, write its command's output
through as it streams, and return the finished cell.

Interrupting (Ctrl-C) asks the daemon to cancel the cell and goes on reading the same
stream, whose last line is then the cell destroyed (its machine gone and logged): the
user is told the outcome, not left guessing, and nothing is asked again and again. A
second Ctrl-C, or a daemon slower than `CANCEL_WAIT`, stops waiting; a CLI killed
outright just drops the connection, which cancels the cell as well.
"""

from __future__ import annotations

import base64
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import httpx

from backend.cells.models import CellLine
from backend.cells.outcome import cancelled_line
from backend.errors import BoxuiError
from backend.state.cell_projection import CellView
from boxui.daemon.client import ApiCallError, DaemonClient
from boxui.daemon.ndjson_stream import follow_ndjson

CELLS_PATH = "/v1/cells"
#: how long a cancelled cell may take to destroy its machine (a stop escalates to SIGKILL)
CANCEL_WAIT = 60


class CellInterrupted(BoxuiError):
    """Ctrl-C: the cell was cancelled (`cell` once the daemon confirmed it)."""

    def __init__(self, message: str, cell: CellView | None) -> None:
        self.cell = cell
        super().__init__(message)


class _GaveUp(Exception):
    """The daemon did not confirm the cancelled cell's end in time."""


def run_cell(client: DaemonClient, body: dict[str, object],
             output: Callable[[str, bytes], None], step: Callable[[str], None]) -> CellView:
    ids: list[str] = []
    cancelled: list[str] = []  # why the cancel was not asked, or "" once asked

    def started(response: httpx.Response) -> None:
        if cell_id := response.headers.get("x-boxui-cell"):
            ids.append(cell_id)

    def cancel() -> None:
        if cancelled or not ids:  # a second Ctrl-C, or before the cell started
            raise KeyboardInterrupt
        try:
            client.call("POST", f"{CELLS_PATH}/{ids[0]}/cancel", also_ok=(404,))
        except BoxuiError as exc:
            cancelled.append(str(exc))
            raise KeyboardInterrupt from None  # dropping the stream cancels it too
        cancelled.append("")
        signal.alarm(CANCEL_WAIT)

    try:
        with _on_interrupt(cancel):
            cell = follow_ndjson(
                client, CELLS_PATH, body, "the cell", CellLine,
                lambda line: _handle(line, output, step), started=started,
                broken_hint="; its next start finishes the cell (see `boxui cells`)",
                missing_hint="see `boxui cells` and its log")
    except KeyboardInterrupt:
        if not ids:
            raise CellInterrupted("interrupted before the cell started", None) from None
        why = cancelled[0] if cancelled and cancelled[0] else "interrupted again"
        raise CellInterrupted(f"cell cancelled, but its end was not confirmed: {why}",
                              None) from None
    except _GaveUp:
        raise CellInterrupted("cell cancelled; the daemon is still destroying its machine "
                              "(see `boxui cells`)", None) from None
    if cancelled:
        raise CellInterrupted(cancelled_line(cell), cell)
    return cell


@contextmanager
def _on_interrupt(cancel: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C calls `cancel` (which may raise KeyboardInterrupt) instead of stopping the
    read; its deadline alarm raises `_GaveUp`. Only the main thread gets signals: any
    other keeps Python's own handling."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(_sig: int, _frame: FrameType | None) -> None:
        cancel()

    def gave_up(_sig: int, _frame: FrameType | None) -> None:
        raise _GaveUp

    previous = signal.signal(signal.SIGINT, interrupted), \
        signal.signal(signal.SIGALRM, gave_up)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGALRM, previous[1])


def _handle(line: CellLine, output: Callable[[str, bytes], None],
            step: Callable[[str], None]) -> CellView | None:
    if line.type == "result" and line.cell is not None:
        return line.cell
    if line.type == "error":
        raise ApiCallError(line.code or "error", line.message or "the cell failed")
    if line.type == "output" and line.data_b64:
        output(line.stream or "stdout", base64.b64decode(line.data_b64))
    elif line.type == "step" and line.message:
        step(line.message)
    return None
