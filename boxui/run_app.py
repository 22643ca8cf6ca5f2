"""`boxui` with no arguments: open the app over an embedded engine."""

from __future__ import annotations

import sys

import click

from backend.state_dir import open_state_dir
from backend.supervisor_lock import lock_holder
from boxui.app_backend import EmbeddedBackend, LinkOptions


def run_app(options: LinkOptions | None = None) -> None:
    if not sys.stdout.isatty():
        raise click.UsageError("the app needs a terminal; for scripts use `boxui ls` and friends")
    options = options or LinkOptions()
    dirs = open_state_dir(options.home)
    holder = lock_holder(dirs.lock_file)
    if holder is not None:
        raise click.ClickException(
            f"state dir is in use by boxui pid {holder}; stop that boxui (or its daemon) "
            "first, or use the CLI (`boxui ls`)")
    from boxui.app import BoxuiApp

    BoxuiApp(EmbeddedBackend(options)).run()
