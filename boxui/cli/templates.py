"""`boxui template build|ls|revisions|rm`: templates to create machines from.

A build boots VMs, which the state dir's one supervisor must own: with a daemon running
it runs there (`boxui.daemon.template_build`), else here under the state dir's lock
(`dispatch.act`); the output is the same either way. `ls`, `revisions` and `rm` touch no
machine and read or write the template store directly (`rm` still refuses while
machines were made from the template).

Template stores, the QEMU driver, builders and asyncio are imported inside the commands:
every `boxui` invocation imports this module, and `boxui ls` must not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from backend.errors import BoxuiError

if TYPE_CHECKING:
    from backend.state.state_dir import StateDir


def _dirs() -> StateDir:
    from backend.state.state_dir import open_state_dir

    return open_state_dir()


def _template_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from backend.state.names import validate_name

    try:
        return validate_name(value)
    except BoxuiError as exc:
        raise click.BadParameter(str(exc).replace("machine name", "template id"),
                                 ctx=ctx, param=param) from None


def _template_source(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A path (it has a '/' or ends in .toml) must be a file; anything else must be a
    valid template id. Either mistake is a usage error, named before any work starts."""
    if "/" in value or value.endswith(".toml") or value in (".", ".."):
        if not Path(value).is_file():
            raise click.BadParameter(f"{value!r}: no such template file", ctx=ctx,
                                     param=param)
        return value
    return _template_id(ctx, param, value)


@click.group("template")
def template_group() -> None:
    """Build, list and remove machine templates (TOML, variants by role)."""


@template_group.command("build")
@click.argument("source", metavar="FILE|ID", callback=_template_source)
@click.option("--snapshot", is_flag=True,
              help="Boot each variant to ready and save its memory, for warm starts.")
@click.option("--json", "as_json", is_flag=True)
def build_cmd(source: str, snapshot: bool, as_json: bool) -> None:
    """Build a revision of a template (a cache hit if nothing changed)."""
    from boxui.daemon.spawn import ensure_daemon
    from boxui.daemon.template_build import build_request, build_via_api, check_request

    def say(message: str) -> None:
        click.echo(f"template: {message}", err=True)

    body = build_request(source, snapshot=snapshot)
    check_request(source, body)  # before a daemon is started for it
    with ensure_daemon() as client:
        result = build_via_api(client, source, snapshot=snapshot, progress=say)
    for note in result.get("notes", []):
        say(note)
    _show_build(result, as_json)


def _show_build(result: dict[str, Any], as_json: bool) -> None:
    """The same whichever process built: `result` is what the API's result line holds."""
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(result)
        return
    template_id, revision, previous = result["template_id"], result["revision"], \
        result["previous"]
    was = "" if previous == revision else \
        f" (was {previous})" if previous else " (its first revision)"
    if result["cache_hit"]:
        click.echo(f"{template_id}: cache hit: revision {revision} was already "
                   f"built from the same inputs; current -> {revision}{was}")
    else:
        click.echo(f"{template_id}: built revision {revision} ({result['kind']}); "
                   f"current -> {revision}{was}")
    for role, key in sorted(result["cache_keys"].items()):
        click.echo(f"  {role}: cache key {key}")


@template_group.command("ls")
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(as_json: bool) -> None:
    """List templates with their current revision."""
    from backend.templates.revision_store import summaries
    from boxui.cli.output import emit_json, table

    found = summaries(_dirs())
    if as_json:
        emit_json([s.as_json() for s in found])
        return
    if not found:
        click.echo("no templates yet (build one with: boxui template build FILE)")
        return
    rows = [[s.template_id, s.current or "-", s.kind or "-", ",".join(s.roles) or "-",
             str(s.revisions)] for s in found]
    click.echo(table(["TEMPLATE", "CURRENT", "KIND", "ROLES", "REVISIONS"], rows))


@template_group.command("revisions")
@click.argument("template_id", callback=_template_id)
@click.option("--json", "as_json", is_flag=True)
def revisions_cmd(template_id: str, as_json: bool) -> None:
    """List a template's revisions, oldest first (* = current)."""
    from backend.templates.errors import TemplateNotFoundError
    from backend.templates.layout import TemplateDir
    from backend.templates.revision_store import current_revision, revisions
    from boxui.cli.output import emit_json, table

    tdir = TemplateDir.of(_dirs(), template_id)
    if not tdir.root.is_dir():
        raise TemplateNotFoundError(f"no template named {template_id!r}")
    current = current_revision(tdir)
    found = revisions(tdir)
    if as_json:
        emit_json([r.model_dump(mode="json") | {"current": r.revision == current}
                   for r in found])
        return
    rows = []
    for r in found:
        sizes = [v.snapshot.vmstate_size_bytes + v.snapshot.ram_file_bytes
                 for v in r.variants.values() if v.snapshot]
        size = f"{sum(sizes) / 1e6:.0f} MB" if sizes else "-"
        rows.append([("* " if r.revision == current else "  ") + r.revision, r.kind,
                     r.built_at.strftime("%Y-%m-%d %H:%M:%S"), ",".join(sorted(r.variants)),
                     size, r.image_hash[:12]])
    click.echo(table(["  REVISION", "KIND", "BUILT", "ROLES", "SNAPSHOTS", "IMAGE"], rows))


@template_group.command("rm")
@click.argument("template_id", callback=_template_id)
@click.option("--revision", help="Remove only this (non-current) revision.")
@click.option("--force", is_flag=True, help="Even if machines were made from it.")
@click.option("--json", "as_json", is_flag=True)
def rm_cmd(template_id: str, revision: str | None, force: bool, as_json: bool) -> None:
    """Remove a template (or one revision) with its snapshots."""
    from backend.templates.machine_from_template import machines_using
    from backend.templates.revision_store import remove

    dirs = _dirs()
    users = machines_using(dirs, template_id, revision)
    if users and not force:
        raise BoxuiError(f"machines made from it cannot start again without it: "
                         f"{', '.join(users)}; remove them first or use --force")
    removed = remove(dirs, template_id, revision, users)
    if as_json:
        from boxui.cli.output import emit_json

        emit_json({"removed": removed, "machines_left_without_it": users})
        return
    for gone in removed:
        click.echo(f"removed {gone}")

