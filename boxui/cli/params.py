"""Arguments and options several commands share.

Names are checked when the command line is parsed, so a bad one is a usage error (exit
2, one line) before any work starts and before anything is created on disk.
"""

from __future__ import annotations

import click

from backend.errors import BoxuiError
from backend.state.names import is_valid_name, validate_name


def name_arg(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_name(value)
    except BoxuiError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def template_ref(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    template_id, _, role = value.partition(":")
    if not is_valid_name(template_id) or (role and not is_valid_name(role)):
        raise click.BadParameter(f"{value!r}: use ID or ID:ROLE (a-z, 0-9, '-')",
                                 ctx=ctx, param=param)
    return value


#: the NAME argument of every command that acts on one machine
machine_name = click.argument("name", callback=name_arg)

#: `--json` on commands that change things (the read-only ones say "Print JSON.")
json_flag = click.option("--json", "as_json", is_flag=True)


def disk_size(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A disk size such as 20G, checked while parsing (the minimum, the image's own size,
    is checked by the daemon, which knows the image)."""
    if value is None:
        return None
    from backend.state.disk_size import parse_size

    try:
        parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def port_mappings(ctx: click.Context, param: click.Parameter,
                  value: tuple[str, ...]) -> list[object]:
    """`[HOST:]GUEST[/udp]`, each checked while parsing (`--port`, `boxui port add`)."""
    from backend.state.port_mapping import PortMapping

    try:
        return [PortMapping.parse(text) for text in value]
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
