"""`boxui cp [-r] SRC DST`: files in and out of a machine, like scp.

It runs here, in the CLI process, straight over SSH to the guest rather than through the
daemon: a file then streams from disk to the guest's SFTP server with many requests in
flight, instead of being read whole into a JSON body, base64'd and held by the daemon;
the CLI can already read the machine's keys (`boxui ssh` uses them), and a copy needs no
supervisor, so none is started for it. asyncssh is imported only by this command.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import click

#: smaller files finish before a progress line would be worth drawing
PROGRESS_MIN_BYTES = 1 << 20
_REDRAW_S = 0.1


class ProgressLine:
    """One line on stderr, redrawn in place while a large file copies, ended when it is
    done; nothing at all unless stderr is a terminal, so pipes and logs stay clean."""

    def __init__(self, stream: TextIO, min_bytes: int = PROGRESS_MIN_BYTES) -> None:
        self.stream, self.min_bytes = stream, min_bytes
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.file = ""

    def __call__(self, path: str, done: int, total: int) -> None:
        if not self.enabled or total < self.min_bytes:
            return
        now = time.monotonic()
        if path != self.file:
            self.file, self.started, self.drawn_at = path, now, 0.0
        if done < total and now - self.drawn_at < _REDRAW_S:
            return
        self.drawn_at = now
        rate = done / max(now - self.started, 1e-3)
        line = (f"{path} {100 * done // total:3d}% {_size(done)}/{_size(total)} "
                f"{_size(int(rate))}/s")
        self.stream.write("\r" + line + "\x1b[K" + ("\n" if done >= total else ""))
        self.stream.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@click.command("cp")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories and their contents.")
@click.argument("src")
@click.argument("dst")
def cp_cmd(recursive: bool, src: str, dst: str) -> None:
    """Copy files between this host and a machine: NAME:PATH on one side (like scp).

    A DST that is a directory receives SRC under its own name; modes and times are kept.
    Needs an SFTP server in the guest (machines made from a Debian image have one).
    """
    from backend.state.machine_store import MachineStore
    from backend.state.state_dir import open_state_dir
    from backend.supervision.file_copy import (
        EndpointError,
        Remote,
        copy_files,
        parse_endpoint,
        plan,
    )
    from boxui.cli.dispatch import run
    from boxui.ssh_commands import machine_target

    try:
        source, target = plan(parse_endpoint(src), parse_endpoint(dst))
    except EndpointError as exc:
        raise click.UsageError(str(exc)) from None
    remote = source if isinstance(source, Remote) else target
    assert isinstance(remote, Remote)
    machine = machine_target(remote.machine)
    spec = MachineStore(open_state_dir()).load(remote.machine).spec
    default_guest = spec is not None and spec.image is None and spec.kernel is None
    run(copy_files(machine.port, machine.keys, machine.machine_dir, source, target,
                   recursive=recursive, progress=ProgressLine(sys.stderr),
                   default_guest=default_guest))


COMMANDS = [cp_cmd]
