"""`boxui exec NAME [--] CMD ...` without click: the hand parser and its fast path.

The parser accepts exactly what click's `exec` command accepts and answers what click
would (NAME and COMMAND); for anything else (`--help`, a bad or missing NAME, no
command, shell completion) it answers None and click parses the command line itself,
so help, usage errors and their exit codes stay click's own. Click's `exec` ignores
unknown options and passes them on in place (`exec vm ls -la`), drops the first `--`
only, and takes NAME as the first argument either side of it.

Only the standard library and the stdlib request in `boxui.ssh_commands` are imported
here: this is the path whose start-up `bench/cli.py` times. Where bin/setup built the
native client (`exec_client.c`, then `.venv/bin/boxui`), an exec reaches this path only
when that client handed it over (no daemon yet, or a command line it does not claim);
a pipx install has no native client and always comes here.
"""

from __future__ import annotations

import os
import sys

from backend.state.names import NAME_PATTERN

#: click's help option
_HELP = "--help"
#: exec's own options, which the hand parser leaves to click
_OWN_OPTIONS = frozenset({"--timeout", "--idempotent", "--attempts", "--host"})
#: set by a shell asking click for completions
_COMPLETE_VAR = "_BOXUI_COMPLETE"


def parse_exec_args(args: list[str]) -> tuple[str, list[str]] | None:
    """NAME and COMMAND of `boxui exec ARGS` as click parses them, or None when click
    must decide (help, a usage error, or a case this parser does not claim)."""
    end = args.index("--") if "--" in args else len(args)
    before, after = args[:end], args[end + 1:]
    if any(arg == _HELP or arg.startswith(_HELP + "=") for arg in before):
        return None
    if any(arg.split("=", 1)[0] in _OWN_OPTIONS for arg in before):
        return None  # exec's own options (a deadline, attempts): click parses them
    positional = before + after
    if len(positional) < 2 or not NAME_PATTERN.fullmatch(positional[0]):
        return None
    return positional[0], positional[1:]


def fast_exec(args: list[str]) -> None:
    """Run `boxui exec ARGS` through a running daemon and exit with the command's exit
    status; return (having done nothing) when click must handle the command line or no
    daemon runs yet (click's `exec` then starts one, importing the spawn code only then)."""
    if os.environ.get("BOXUI_HOST", "local") != "local":
        return  # another host: click's exec reaches it through SSH
    parsed = None if os.environ.get(_COMPLETE_VAR) else parse_exec_args(args)
    if parsed is None:
        return
    from backend.errors import BoxuiError
    from backend.state.state_dir import open_state_dir
    from boxui.ssh_commands import exec_through_daemon

    if (open_state_dir().root / "current-host").exists():
        return  # `boxui host use` chose a host: click's exec decides where it runs

    try:
        code = exec_through_daemon(*parsed)
    except BoxuiError as exc:
        print(f"boxui: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: one line, as `boxui.cli.root.main` says it
        if os.environ.get("BOXUI_DEBUG"):
            raise
        print(f"boxui: internal error: {type(exc).__name__}: {exc} "
              "(BOXUI_DEBUG=1 shows details)", file=sys.stderr)
        sys.exit(70)
    if code is not None:
        sys.exit(code)
