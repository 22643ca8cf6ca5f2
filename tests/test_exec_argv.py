"""`boxui exec` is parsed by hand before click is imported (`boxui.cli.fast_exec`): for
every command line the hand parser either answers exactly what click's `exec` would, or
leaves the command line to click (help, usage errors). And a real `boxui exec` against a
daemon that answers never imports click."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.state.state_dir import open_state_dir
from boxui.cli.fast_exec import parse_exec_args
from boxui.cli.machine_access import exec_cmd

Parsed = tuple[str, list[str]] | None


def click_parse(args: list[str]) -> Parsed:
    """What click's own `exec` makes of `args`: NAME and COMMAND, or None when it would
    print help or a usage error instead of running anything."""
    try:
        ctx = exec_cmd.make_context("exec", list(args))
    except (click.UsageError, click.exceptions.Exit):
        return None
    return ctx.params["name"], list(ctx.params["command"])


CASES: list[tuple[list[str], Parsed]] = [
    (["vm", "--", "true"], ("vm", ["true"])),
    (["vm", "true"], ("vm", ["true"])),
    (["vm", "ls", "-la"], ("vm", ["ls", "-la"])),  # unknown options pass on, in place
    (["vm", "-t", "ls"], ("vm", ["-t", "ls"])),  # exec has no -t: it is the command's
    (["vm", "ls", "--color=never", "-"], ("vm", ["ls", "--color=never", "-"])),
    (["vm", "--", "ls", "--", "x"], ("vm", ["ls", "--", "x"])),  # only the first -- goes
    (["--", "vm", "true"], ("vm", ["true"])),  # NAME after --
    (["vm", "--", "sh", "-c", "echo $X"], ("vm", ["sh", "-c", "echo $X"])),
    (["vm", "--", "true", "--help"], ("vm", ["true", "--help"])),  # after --: the command's
    (["vm", "--", ""], ("vm", [""])),
    (["vm", "--hel"], ("vm", ["--hel"])),  # no abbreviations of --help
    (["vm", "--", "--"], ("vm", ["--"])),
    # click decides these: help, or a usage error (exit 2)
    (["--help"], None),
    (["vm", "--help"], None),
    (["vm", "true", "--help"], None),
    (["vm", "--help=1", "true"], None),
    ([], None),
    (["vm"], None),
    (["vm", "--"], None),
    (["--", "vm"], None),
    (["-t", "vm", "true"], None),  # NAME would be "-t": invalid
    (["BAD!", "true"], None),
    (["", "true"], None),
    (["a" * 64, "true"], None),
]


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_hand_parser_agrees_with_click(args: list[str], expected: Parsed) -> None:
    assert click_parse(args) == expected
    assert parse_exec_args(args) == expected


TOKENS = st.sampled_from(["--", "-t", "-", "--help", "--help=x", "--he", "vm", "web-1",
                          "true", "-la", "--x=1", "BAD", "", "a b", "-1", "---"])


@settings(max_examples=400, deadline=None)
@given(st.lists(TOKENS, max_size=6))
def test_hand_parser_claims_exactly_what_click_runs(args: list[str]) -> None:
    assert parse_exec_args(args) == click_parse(args)


def _daemon_answering(path: Path, body: bytes) -> threading.Thread:
    """A one-request server on the API socket that answers `body` to an exec."""
    path.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_exec_through_a_daemon_never_imports_click(home: Path) -> None:
    """Nor pydantic, SSH or HTTP libraries, nor the stdlib modules whose imports cost
    most (`dataclasses` brings `inspect` and `ast`)."""
    body = b'{"exit_code": 4, "stdout_b64": "aGk=", "stderr_b64": "", "command": {}}'
    thread = _daemon_answering(open_state_dir(home).api_socket, body)
    probe = ("import sys\n"
             "sys.argv = ['boxui', 'exec', 'vm', '--', 'true']\n"
             "from boxui.cli.main import main\n"
             "try:\n    main()\n"
             "except SystemExit as exc:\n"
             "    print('', sorted(m for m in ('click', 'pydantic', 'httpx', 'asyncssh',\n"
             "                                 'dataclasses', 'typing', 'tempfile')\n"
             "                     if m in sys.modules), exc.code)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "BOXUI_HOME": str(home)}, timeout=60)
    thread.join(30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hi [] 4\n"


def test_a_usage_error_is_still_clicks(home: Path) -> None:
    boxui = str(Path(sys.executable).with_name("boxui"))  # the console entry point
    out = subprocess.run([boxui, "exec", "vm"], capture_output=True, text=True,
                         env={**os.environ, "BOXUI_HOME": str(home)}, timeout=60)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "boxui exec: Missing argument 'COMMAND...'. (see --help)\n"
