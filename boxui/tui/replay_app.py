"""The app over a `ReplayBackend`, marked REPLAY in its header, title and table border
so that nobody takes a recording for live machines."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from backend.errors import BoxuiError
from boxui.tui.app import BoxuiApp
from boxui.tui.messages import BackendStarted
from boxui.tui.recording import load_recording
from boxui.tui.replay import ReplayBackend, replay_title
from boxui.tui.widgets.machine_table import MachineTable
from boxui.tui.widgets.status_header import StatusHeader


class ReplayApp(BoxuiApp):
    """See `DemoApp` on handlers: Textual calls every class's `on_*`, so no `super()`."""

    TITLE = "boxui replay"

    def __init__(self, backend: ReplayBackend) -> None:
        super().__init__(backend, clock=backend.wall_clock)
        self.replay = backend
        self.marker = replay_title(backend)

    def on_mount(self) -> None:
        self.title = f"boxui · {self.marker}"
        self.call_later(self._label_replay)

    def _label_replay(self) -> None:
        self.query_one(MachineTable).border_title = f"machines · {self.marker}"

    def _update_header(self) -> None:
        super()._update_header()
        header = self.query_one(StatusHeader)
        if not header._markup.startswith("[b reverse]"):
            header.show(f"[b reverse] {self.marker} [/]  {header._markup}")

    def on_backend_started(self, _: BackendStarted) -> None:
        self.run_worker(self._announce_end(), group="replay", exit_on_error=False)
        self.notify(f"Playing {self.replay.source or 'a recording'} back. Every view works; "
                    "actions are refused (nothing runs). q quits.", title="boxui replay",
                    timeout=8)

    async def _announce_end(self) -> None:
        await self.replay.finished.wait()
        self.notify(f"the replay ended ({self.replay.played} events)", timeout=8)


def run_replay(path: Path, speed: float) -> None:
    recording = load_recording(path)  # a bad file is reported with or without a terminal
    if not sys.stdout.isatty():
        raise BoxuiError("the replay needs a terminal")
    home = Path(tempfile.mkdtemp(prefix="boxui-replay-"))
    try:
        ReplayApp(ReplayBackend(recording, home, speed=speed, source=path.name)).run()
    finally:
        shutil.rmtree(home, ignore_errors=True)
