"""When to restart a machine that died, and when to give up.

A guest that dies at once must not be restarted in a tight loop: restarts back off
exponentially (1 s doubling to 60 s), and after 5 failures within 10 minutes the machine
is declared failed. A run that stayed up long enough proves the machine healthy again and
resets the count, so one crash a day never adds up to "failed".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BASE_DELAY = 1.0
MAX_DELAY = 60.0
BURST_LIMIT = 5
BURST_WINDOW = 600.0
STABLE_RUN = 60.0


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay: float
    failures: int

    def describe(self) -> str:
        if self.restart:
            return f"restarting in {self.delay:.0f} s (failure {self.failures} of {BURST_LIMIT})"
        return f"gave up after {self.failures} failures within {BURST_WINDOW / 60:.0f} minutes"


class RestartTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: deque[float] = deque()
        self._up_since: float | None = None

    def machine_up(self) -> None:
        """The machine reached ready; if it then stays up for STABLE_RUN, the slate is clean."""
        self._up_since = self._clock()

    def machine_down(self) -> None:
        self._settle()
        self._up_since = None

    def _settle(self) -> None:
        if self._up_since is not None and self._clock() - self._up_since >= STABLE_RUN:
            self._failures.clear()

    def record_failure(self) -> RestartDecision:
        self._settle()
        self._up_since = None
        now = self._clock()
        while self._failures and now - self._failures[0] > BURST_WINDOW:
            self._failures.popleft()
        self._failures.append(now)
        count = len(self._failures)
        if count >= BURST_LIMIT:
            return RestartDecision(restart=False, delay=0.0, failures=count)
        return RestartDecision(restart=True, delay=min(BASE_DELAY * 2 ** (count - 1), MAX_DELAY),
                               failures=count)

    def reset(self) -> None:
        """A user's explicit start is a fresh beginning."""
        self._failures.clear()
        self._up_since = None


def should_restart(policy: str, failure: bool) -> bool:
    if policy == "always":
        return True
    if policy == "on-failure":
        return failure
    return False


def acts_on_hang(policy: str) -> bool:
    """Whether boxui kills and restarts a machine that stopped answering (a hung
    hypervisor, a guest failing its liveness probe): handled like a crash, because a
    machine nothing in can answer is as good as dead, except that its process must be
    killed first. With `never` it stays as it is, for a user to look at and stop."""
    return should_restart(policy, failure=True)
