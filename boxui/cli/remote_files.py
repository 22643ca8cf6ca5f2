"""This machine's files for a command run on a remote boxui host: `cp`, `run --input/
--export` and `create --provision`.

The command runs there (relayed, or `create` against the forwarded API), where its own
code reads paths of that host; so the files go through a private staging dir there
(`backend.hosts.staging`), the command is given the staged paths, and what it left for
this machine (a `cp` download, `run`'s exports) comes back. The stage is removed
afterwards whatever happens, a Ctrl-C included. Bad input is refused here, before
anything moves, with the line the command would print locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from backend.errors import BoxuiError
from backend.hosts import kept_link, staging
from backend.hosts.registry import HostDef
from backend.hosts.ssh_link import SshLink
from backend.state.state_dir import open_state_dir
from backend.supervision.file_copy import (
    EndpointError,
    Local,
    Remote,
    check,
    local_kind,
    parse_endpoint,
    plan,
)
from boxui.cli import hosts


class RemoteStage:
    """A staging dir on `host`, for the `with` block."""

    def __init__(self, host: HostDef) -> None:
        self.host = host
        self.path = ""

    def _ask(self, **payload: Any) -> dict[str, Any]:
        payload = {"op": "stage", "stage": self.path, **payload}
        if kept_link.idle_timeout() > 0:
            return kept_link.ask(open_state_dir(), self.host, payload)
        return asyncio.run(staging.handle_once(SshLink(self.host), payload))

    def __enter__(self) -> RemoteStage:
        try:
            with _ctrl_c_deferred():  # made and known, or not made
                self.path = str(self._ask(action="make")["stage"])
        except KeyboardInterrupt:
            self._remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._remove()

    def _remove(self) -> None:
        """Remove it, a Ctrl-C held until then; a failure to is said, and does not hide
        what ended the block."""
        if not self.path:
            return
        with _ctrl_c_deferred():
            try:
                self._ask(action="rm")
            except BoxuiError as failure:
                click.echo(f"boxui: host {self.host.name}: staging dir {self.path} left "
                           f"behind ({failure})", err=True)

    def mkdir(self, name: str) -> str:
        path = posixpath.join(self.path, name)
        self._ask(action="mkdir", remote=path)
        return path

    def put(self, local: str, name: str) -> str:
        """`local` (a file or a folder) there as NAME in the stage; its path there."""
        path = posixpath.join(self.path, name)
        self._ask(action="put", local=os.path.abspath(local), remote=path)
        return path

    def get(self, remote: str, local: str) -> None:
        self._ask(action="get", local=os.path.abspath(local), remote=remote)

    def entries(self, remote: str | None = None) -> dict[str, bool]:
        """A dir's entries there (the stage's by default): name -> is a dir."""
        answer = self._ask(action="list", remote=remote or self.path)
        return {str(k): bool(v) for k, v in answer["entries"].items()}


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """A Ctrl-C in the block raised when it ends (a signal handler: other threads' signals
    too), so a stage is never made unknown or left half removed."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _leaf(path: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(path))) or "root"


def cp_on_host(host: HostDef, recursive: bool, src: str, dst: str) -> int:
    """`boxui cp [-r] SRC DST` with a machine of `host`: its exit status."""
    try:
        source, target = plan(parse_endpoint(src), parse_endpoint(dst))
    except EndpointError as exc:
        raise click.UsageError(str(exc)) from None
    flag = ["-r"] if recursive else []
    if isinstance(source, Local):
        assert isinstance(target, Remote)
        check(local_kind(source.path), str(source), "dir", "", "", lambda: "dir", recursive)
        with RemoteStage(host) as stage:
            staged = stage.put(source.path, _leaf(source.path))
            return hosts.relay_to_remote(host, ["cp", *flag, staged, str(target)])
    assert isinstance(source, Remote) and isinstance(target, Local)
    with RemoteStage(host) as stage:  # the source is checked there first, as cp does
        code = hosts.relay_to_remote(host, ["cp", *flag, str(source), stage.path])
        if code != 0:
            return code
        ((name, is_dir),) = stage.entries().items()
        text = target.path
        check("dir" if is_dir else "file", str(source), local_kind(text), text, text,
              lambda: local_kind(posixpath.dirname(text.rstrip("/")) or "."), recursive)
        stage.get(posixpath.join(stage.path, name), text)
    return 0


def rewrite_options(args: list[str], values: dict[str, list[str]]) -> list[str]:
    """`args` with the first occurrences of each option (`--input X`, `--input=X`, before
    any `--`) given the new values in turn."""
    left = {option: list(new) for option, new in values.items()}
    out: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return out + args[index:]
        option, eq, _ = arg.partition("=")
        if left.get(option):
            out += [option, left[option].pop(0)]
            index += 1 if eq else 2
            continue
        out.append(arg)
        index += 1
    return out


def run_on_host(host: HostDef, params: dict[str, object], args: list[str]) -> int:
    """`boxui run --input/--export ...` on `host`: inputs staged there, exports made into
    the stage and brought back to their HOST_DIRs here; the command's exit status."""
    inputs = params.get("inputs") or []
    exports = params.get("exports") or []
    assert isinstance(inputs, list) and isinstance(exports, list)
    with RemoteStage(host) as stage:
        staged_inputs, staged_exports, back = [], [], []
        for index, item in enumerate(inputs):
            stage.mkdir(f"in-{index}")
            staged = stage.put(item["host_path"], f"in-{index}/{_leaf(item['host_path'])}")
            staged_inputs.append(f"{staged}:{item['guest_path']}")
        for index, item in enumerate(exports):
            there = stage.mkdir(f"out-{index}")
            staged_exports.append(f"{item['guest_path']}:{there}")
            back.append((there, item["host_dir"]))
        sys.stdout.flush()
        code = hosts.relay_to_remote(host, rewrite_options(
            hosts.strip_host_option(args), {"--input": staged_inputs, "--export": staged_exports}))
        for there, host_dir in back:
            for name in stage.entries(there):
                stage.get(posixpath.join(there, name), host_dir)
    return code


def stage_provision(stage: RemoteStage, scripts: tuple[Path, ...]) -> tuple[Path, ...]:
    """`create --provision` scripts copied into `stage`, under their own names (the
    machine's record names them); their paths there."""
    staged = []
    for index, script in enumerate(scripts):
        stage.mkdir(f"provision-{index}")
        staged.append(Path(stage.put(str(script), f"provision-{index}/{script.name}")))
    return tuple(staged)

