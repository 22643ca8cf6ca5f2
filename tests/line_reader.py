"""Reading a child process's output line by line, with a deadline on every line.

A blocking `readline()` on a pipe waits for ever when the child stays silent, so a test
that missed what it waited for would hang instead of failing. Here a thread does the
blocking reads and the test waits on a queue, which takes a timeout.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import IO

EOF = ""


class LineReader:
    """The lines of `stream`, each waited for at most `timeout` seconds; `EOF` ("") once
    the stream is closed. The reading thread is a daemon: a child that never closes its
    end cannot keep the test run alive."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._ended = False
        #: every line handed out so far, for failure messages
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line)
        except ValueError:  # closed by the test while reading
            pass
        self._lines.put(EOF)

    def next(self, timeout: float) -> str:
        """The next line, or `EOF`; fails the test if none came within `timeout` s."""
        if self._ended:
            return EOF
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s") from None
        self._ended = line == EOF
        self.seen.append(line)
        return line

    def until(self, text: str, timeout: float) -> bool:
        """Read up to the first line containing `text`: True once read, False if the
        stream ended or `timeout` seconds passed first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.next(left)
            except AssertionError:
                return False
            if line == EOF:
                return False
            if text in line:
                return True
        return False
