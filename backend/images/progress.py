"""Typed progress of an image build, read from mmdebstrap's (and apt's, dpkg's) output.

mmdebstrap `--verbose` passes apt's and dpkg's own lines through, which say which
package is being fetched, unpacked or set up; counting them against apt's "N newly
installed" gives "n of m". Errors (`E:` lines, dpkg's "error processing package") are
kept so that a failed build can name its step and the package to blame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

Step = Literal["resolving", "downloading", "unpacking", "configuring", "customizing",
               "packing", "done"]


class ImageProgress(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: Step
    message: str
    done: int | None = None
    total: int | None = None
    package: str | None = None


_NEWLY = re.compile(r"^\d+ upgraded, (\d+) newly installed")
# Get:83 http://deb.debian.org/debian bookworm/main amd64 curl amd64 7.88.1-10 [316 kB]
_GET_DEB = re.compile(r"^Get:\d+ \S+ \S+ \S+ (\S+) \S+ \S+ \[")
_UNPACK = re.compile(r"^Unpacking ([^:\s]+)")
_SETUP = re.compile(r"^Setting up ([^:\s]+)")
_DPKG_ERROR = re.compile(r"^dpkg: error processing (?:package|archive) (\S+?)(?::\w+)? ")
_NO_PACKAGE = re.compile(r"^E: (?:Unable to locate package |Package ')([^\s']+)")
_NO_VERSION = re.compile(r"^E: Version '[^']*' for '([^']+)'")
_FETCH = re.compile(r"^E: Failed to fetch \S*/([^/_\s]+)_[^/\s]*\.deb")
_UNMET = re.compile(r"^ ([a-z0-9][a-z0-9+.-]+) : (?:Pre)?Depends:")
_STAGES: dict[str, tuple[Step, str]] = {
    "I: running apt-get update": ("resolving", "fetching the package index"),
    "I: downloading packages with apt": ("resolving", "resolving the essential packages"),
    "I: extracting archives": ("unpacking", "extracting the essential packages"),
    "I: installing essential packages": ("unpacking", "installing the essential packages"),
    "I: installing remaining packages": ("resolving", "resolving the recipe's packages"),
    "I: running --customize-hook": ("customizing", "adding modules, files and commands"),
    "I: cleaning package lists": ("customizing", "cleaning the package cache"),
}


@dataclass
class ProgressParser:
    """Fed one output line at a time; `feed` returns an event when there is news."""

    step: Step = "resolving"
    total: int = 0
    fetched: int = 0
    unpacked: int = 0
    configured: int = 0
    errors: list[str] = field(default_factory=list)
    culprit: tuple[Step, str] | None = None
    tail: list[str] = field(default_factory=list)

    def feed(self, raw: str) -> ImageProgress | None:
        line = raw.rstrip("\n")
        if line.strip():
            self.tail = [*self.tail[-19:], line.strip()]
        self._note_error(line)
        for prefix, (step, message) in _STAGES.items():
            if line.startswith(prefix):
                self.step = step
                return ImageProgress(step=step, message=message)
        if match := _NEWLY.match(line):
            self.total += int(match.group(1))
            return None
        if match := _GET_DEB.match(line):
            self.fetched += 1
            self.step = "downloading"
            return self._counted("downloading", self.fetched, match.group(1))
        if match := _UNPACK.match(line):
            self.unpacked += 1
            self.step = "unpacking"
            return self._counted("unpacking", self.unpacked, match.group(1))
        if match := _SETUP.match(line):
            self.configured += 1
            self.step = "configuring"
            return self._counted("configuring", self.configured, match.group(1))
        return None

    def _counted(self, step: Step, done: int, package: str) -> ImageProgress:
        total = max(self.total, done)
        return ImageProgress(step=step, message=f"{step} {done}/{total} {package}",
                             done=done, total=total, package=package)

    def _note_error(self, line: str) -> None:
        if line.startswith(("E: ", "dpkg: error")):
            self.errors.append(line.strip())
        if self.culprit is not None:
            return
        for pattern, step in ((_DPKG_ERROR, None), (_NO_PACKAGE, "resolving"),
                              (_NO_VERSION, "resolving"), (_FETCH, "downloading"),
                              (_UNMET, "resolving")):
            if match := pattern.match(line):
                self.culprit = (step or self.step, match.group(1))  # type: ignore[assignment]
                return

    def failure(self) -> tuple[Step, str | None, str]:
        """(step, package or None, reason) for a build whose mmdebstrap failed."""
        step, package = self.culprit if self.culprit else (self.step, None)
        reason = self.errors[0] if self.errors else (self.tail[-1] if self.tail else
                                                     "mmdebstrap failed with no output")
        if reason.startswith("E: "):
            reason = reason[3:]
        return step, package, reason
