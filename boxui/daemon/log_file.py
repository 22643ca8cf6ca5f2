"""The background daemon's log: `logs/daemon.log` under the state dir, rotated.

The daemon's stdout and stderr point at the same file (the CLI that started it set that
up, so a traceback before logging starts is kept); rotation moves them along to the new
file, so nothing keeps writing into a rotated-away one.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

MAX_BYTES = 2 * 1024 * 1024
BACKUPS = 3
FORMAT = "%(asctime)s boxui: %(message)s"


class _DaemonLog(RotatingFileHandler):
    def doRollover(self) -> None:
        super().doRollover()
        if self.stream is not None:
            self.stream.flush()
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)


def log_to_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    handler = _DaemonLog(path, maxBytes=MAX_BYTES, backupCount=BACKUPS)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
