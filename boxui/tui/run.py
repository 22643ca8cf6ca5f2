"""`boxui` with no arguments: open the app over an embedded engine, or over the running
`boxui daemon` when there is one.

The CLI imports this module to open the app, so its top stays light: the app and its
backends (Textual, the engine, the API server: about a second) are imported only in
`run_app`, once a terminal is known to be there.
"""

from __future__ import annotations

import dataclasses
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

    options = dataclasses.replace(options or BackendOptions(), hand_over_on_close=True)
    backend = choose_backend(options)
    try:
        BoxuiApp(backend).run()
    finally:
        handed = hand_over_if_embedded(backend)
    if handed is not None:
        click.echo(handed)


def hand_over_if_embedded(backend: AppBackend) -> str | None:
    """The app closed: if it supervised running machines itself, a background daemon
    takes them over (see `embedded`); what to tell the user, if anything."""
    from boxui.tui.embedded import EmbeddedBackend  # loaded by `choose_backend` already

    return backend.hand_over() if isinstance(backend, EmbeddedBackend) else None


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
