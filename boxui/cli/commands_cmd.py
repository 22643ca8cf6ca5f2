"""`boxui commands [NAME]`: the command registry, read from the state dir.

Like `ls`, it takes no lock and starts no daemon: the journals under `commands/` are the
registry, so what a dead supervisor left is shown too (a dispatched command whose lease
ran out is marked, until the next supervisor expires or re-dispatches it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from boxui.cli.params import name_arg

if TYPE_CHECKING:
    from backend.state.command_record import CommandRecord

HEADERS = ["ID", "MACHINE", "STATE", "ATTEMPT", "CREATED", "TOOK", "EXIT", "COMMAND", "ERROR"]


@click.command("commands")
@click.argument("name", required=False, callback=name_arg)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--last", "-n", type=click.IntRange(min=1), default=None,
              help="Only the newest N commands.")
def commands_cmd(name: str | None, as_json: bool, last: int | None) -> None:
    """List commands run in machines (all, or NAME's): unfinished first, then newest."""
    from backend.state.command_journal import CommandJournal
    from backend.state.events import now_utc
    from backend.state.live_supervisor import live_supervisor
    from backend.state.state_dir import open_state_dir
    from boxui.cli.output import emit_json, table

    dirs = open_state_dir()
    records = [r for r in CommandJournal(dirs.root / "commands").load(compact=False)
               if name is None or r.machine == name]
    records.sort(key=lambda r: (r.finished, -r.created_at.timestamp()))
    records = records[:last] if last else records
    if as_json:
        emit_json([r.model_dump(mode="json") for r in records])
        return
    if not records:
        click.echo(f"no commands yet{f' in {name}' if name else ''}")
        return
    now = now_utc()
    orphaned = live_supervisor(dirs.lock_file) is None
    rows = [_row(r, now, orphaned) for r in records]
    click.echo(table(HEADERS, rows))
    if any(row[2].endswith("*") for row in rows):
        click.echo("* its supervisor died (lease ran out); the next one expires it, or "
                   "dispatches it again if it is idempotent")


def _row(record: CommandRecord, now: datetime, orphaned: bool) -> list[str]:
    state = record.state.value
    lease = record.lease_expires_at
    if not record.finished and (orphaned or (lease is not None and lease < now)):
        state += "*"
    took = ""
    if record.dispatched_at is not None:
        end = record.completed_at or now
        took = f"{(end - record.dispatched_at).total_seconds():.2f}s"
    created = record.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return [record.id[:12], record.machine, state, f"{record.attempt}/{record.max_attempts}",
            created, took, "" if record.exit_code is None else str(record.exit_code),
            _short(record.command, 40), _short(record.error or "", 60)]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
