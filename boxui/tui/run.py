"""`boxui` with no arguments: open the app over an embedded engine, or over the running
`boxui daemon` when there is one."""

from __future__ import annotations

import sys

import click

from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import lock_holder
from boxui.tui.embedded import EmbeddedBackend, LinkOptions


def run_app(options: LinkOptions | None = None) -> None:
    if not sys.stdout.isatty():
        raise click.UsageError("the app needs a terminal; for scripts use `boxui ls` and friends")
    options = options or LinkOptions()
    dirs = open_state_dir(options.home)
    holder = lock_holder(dirs.lock_file)
    from boxui.tui.app import BoxuiApp
    from boxui.tui.remote import find_daemon_link

    if holder is None:
        BoxuiApp(EmbeddedBackend(options)).run()
        return
    link = find_daemon_link(options)
    if link is None:
        raise click.ClickException(
            f"state dir is in use by boxui pid {holder}, which serves no API (another "
            "app?); close it, or use the CLI (`boxui ls`)")
    BoxuiApp(link).run()
