"""`boxui events`: print the log, and with --follow keep printing as it grows.

Following is driven by filesystem notifications (watchfiles), not by polling the file.
"""

from __future__ import annotations

import json

import click
from watchfiles import awatch

from backend.state.event_log import iter_new_records, read_log
from backend.state.events import CloudEvent
from backend.state.state_dir import StateDir
from boxui.cli.output import event_line


def _show(event: CloudEvent, name: str | None, as_json: bool) -> None:
    if name is not None and event.subject != name:
        return
    if as_json:
        click.echo(json.dumps(event.to_json_dict()))
    else:
        click.echo(event_line(event))


async def print_events(
    dirs: StateDir, name: str | None, *, follow: bool, as_json: bool, last: int | None
) -> None:
    path = dirs.event_log
    scan = read_log(path)
    for bad in scan.bad_records:
        click.echo(f"boxui: {path}:{bad.line}: skipped a bad record: {bad.reason}", err=True)
    events = [e for e in scan.events if name is None or e.subject == name]
    if last is not None:
        events = events[-last:] if last else []
    for event in events:
        _show(event, None, as_json)
    if not follow:
        return
    offset = scan.good_end
    async for _changes in awatch(path.parent, debounce=50, step=20):
        new, offset = iter_new_records(path, offset)
        for event in new:
            _show(event, name, as_json)
