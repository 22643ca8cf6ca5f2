"""`boxui doctor`: what this host has and lacks for running guests, one line per check.

`bin/setup` runs it (with --quiet) after installing, so the first run of `bin/boxui`
shows the same lines. The checks themselves live in `backend.supervision.host_checks`,
imported when the command runs: every `boxui` invocation imports this module, and
`boxui ls` must not pay for the QEMU driver's modules.
"""

from __future__ import annotations

import sys

import click


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", "-q", is_flag=True,
              help="Print only the checks that fail or warn.")
def doctor_cmd(as_json: bool, quiet: bool) -> None:
    """Check what the host needs (QEMU, KVM, image tools, ssh, disk, state dir).

    Exits 1 when something needed is missing; optional things only warn.
    """
    from backend.supervision.host_checks import host_is_fit, run_checks
    from boxui.cli.output import emit_json

    checks = run_checks()
    fit = host_is_fit(checks)
    if as_json:
        emit_json({"ok": fit, "checks": [check.as_json() for check in checks]})
    else:
        for check in checks:
            if not quiet or check.status != "ok":
                click.echo(check.line())
    if not fit:
        sys.exit(1)
