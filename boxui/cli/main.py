"""The `boxui` entry point.

`boxui exec NAME -- CMD` is timed by people in loops, and importing click with every
command module costs more than the daemon takes to run a command; so exec is parsed by
hand first (`boxui.cli.fast_exec`) and the full command line is imported only when that
parser leaves the command to click (help, anything it does not understand, or no
daemon running yet), which keeps behaviour and errors identical.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing's own costs an import; mypy reads this one as True
if TYPE_CHECKING:
    from typing import Any

    from boxui.cli.root import cli as cli


def main() -> None:
    if sys.argv[1:2] == ["exec"]:
        from boxui.cli.fast_exec import fast_exec

        fast_exec(sys.argv[2:])  # exits when it ran the command; else click takes over
    from boxui.cli.root import main as click_main

    click_main()


def __getattr__(name: str) -> Any:
    """`cli`, the click group, for callers that import it from here (tests, tools):
    loaded on use, so that the entry point itself stays free of click."""
    if name == "cli":
        from boxui.cli.root import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
