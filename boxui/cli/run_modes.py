"""`boxui demo`: the app over sample machines, in the foreground.

The app is imported inside the command: every `boxui` invocation imports this module,
and `boxui ls` must not pay for Textual. (`boxui daemon` lives in `daemon_cmds`.)
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Demo state dir (default: next to the normal one, named *-demo); "
              "wiped at start if made by an earlier demo.")
def demo_cmd(home: Path | None) -> None:
    """Open the app over sample machines that show every state (no VMs involved)."""
    from boxui.tui.demo import run_demo

    run_demo(home)


COMMANDS = [demo_cmd]
