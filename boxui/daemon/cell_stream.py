"""Following a cell the daemon runs (`boxui run`): post it, write its command's output
through as it streams, and return the finished cell.

Interrupting (Ctrl-C) asks the daemon to cancel the cell, then waits until the daemon has
destroyed its machine and logged it, so the user is told the outcome, not left guessing;
a CLI killed outright just drops the connection, which cancels the cell as well.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
from pydantic import ValidationError

from backend.cells.models import CellLine
from backend.errors import BoxuiError
from backend.state.cell_projection import CellStage, CellView
from boxui.daemon.client import (
    BASE_URL,
    TIMEOUT,
    ApiCallError,
    DaemonClient,
    read_answer,
    unreachable,
)

CELLS_PATH = "/v1/cells"
#: how long a cancelled cell may take to destroy its machine (a stop escalates to SIGKILL)
CANCEL_WAIT = 60.0


class CellInterrupted(BoxuiError):
    """Ctrl-C: the cell was cancelled (`cell` once the daemon confirmed it)."""

    def __init__(self, message: str, cell: CellView | None) -> None:
        self.cell = cell
        super().__init__(message)


def run_cell(client: DaemonClient, body: dict[str, object],
             output: Callable[[str, bytes], None], step: Callable[[str], None]) -> CellView:
    transport = httpx.HTTPTransport(uds=str(client.socket_path))
    cell_id: str | None = None
    try:
        with httpx.Client(transport=transport, base_url=BASE_URL, timeout=TIMEOUT) as http, \
                http.stream("POST", CELLS_PATH, json=body) as response:
            if response.status_code >= 400:
                response.read()
                read_answer(response)  # raises the daemon's error
            cell_id = response.headers.get("x-boxui-cell")
            for raw in response.iter_lines():
                if raw.strip() and (cell := _handle(_read(raw), output, step)) is not None:
                    return cell
    except KeyboardInterrupt:
        raise _cancelled(client, cell_id) from None
    except httpx.ConnectError as exc:
        raise unreachable(client.pid, client.socket_path, exc) from None
    except httpx.TransportError as exc:
        raise BoxuiError(f"the boxui daemon (pid {client.pid}) broke off the cell: {exc}; "
                         "its next start finishes the cell (see `boxui cells`)") from None
    raise BoxuiError(f"the boxui daemon (pid {client.pid}) ended the cell without a result; "
                     "see `boxui cells` and its log")


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


def _read(raw: str) -> CellLine:
    try:
        return CellLine.model_validate_json(raw)
    except ValidationError:
        raise BoxuiError(f"the boxui daemon sent a cell line this boxui cannot read: "
                         f"{raw[:200]}") from None


def _cancelled(client: DaemonClient, cell_id: str | None) -> CellInterrupted:
    """Cancel the cell and wait (bounded) until the daemon logged it destroyed."""
    if cell_id is None:
        return CellInterrupted("interrupted before the cell started", None)
    try:
        client.call("POST", f"{CELLS_PATH}/{cell_id}/cancel", also_ok=(404,))
        deadline = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < deadline:
            cells = client.call("GET", CELLS_PATH)
            cell = next((CellView.model_validate(c) for c in cells if c["id"] == cell_id), None)
            if cell is not None and cell.stage is CellStage.DESTROYED:
                return CellInterrupted(f"cell {cell.name} cancelled; its machine was "
                                       + ("kept" if cell.machine_kept else "destroyed"), cell)
            time.sleep(0.1)
    except BoxuiError as exc:
        return CellInterrupted(f"cell cancelled, but its end was not confirmed: {exc}", None)
    return CellInterrupted("cell cancelled; the daemon is still destroying its machine "
                           "(see `boxui cells`)", None)
