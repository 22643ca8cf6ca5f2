"""`boxui` with no arguments: open the app over an embedded engine, or over the running
`boxui daemon` when there is one.

The CLI imports this module to open the app, so its top stays light: the app and its
backends (Textual, the engine, the API server: about a second) are imported only in
`run_app`, once a terminal is known to be there.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import lock_holder

if TYPE_CHECKING:
    from boxui.tui.backend import AppBackend, BackendOptions


def run_app(options: BackendOptions | None = None) -> None:
    if not sys.stdout.isatty():
        raise click.UsageError("the app needs a terminal; for scripts use `boxui ls` and friends")
    # deferred so that `boxui` refuses a non-terminal without importing the app (see above)
    from boxui.tui.app import BoxuiApp
    from boxui.tui.backend import BackendOptions

    BoxuiApp(choose_backend(options or BackendOptions())).run()


def choose_backend(options: BackendOptions) -> AppBackend:
    """The state dir has one supervisor at a time: be it, or follow the daemon that is."""
    # deferred with the app's own imports (see the module's docstring)
    from boxui.tui.embedded import EmbeddedBackend
    from boxui.tui.remote import find_daemon_backend

    holder = lock_holder(open_state_dir(options.home).lock_file)
    if holder is None:
        return EmbeddedBackend(options)
    remote = find_daemon_backend(options)
    if remote is None:
        raise click.ClickException(
            f"state dir is in use by boxui pid {holder}, which serves no API (a `boxui` "
            "command at work?); try again when it is done, or use the CLI (`boxui ls`)")
    return remote
