"""Files moved to and from a remote boxui host for a command relayed there (`cp`,
`run --input/--export`, `create --provision`): the remote's own boxui reads its own
paths, so this machine's files go through a private staging dir there first.

The remote boxui makes the dir (`boxui host stage`: 0700, a unique name under its state
dir, which only it knows) and the files move over SFTP on the host's SSH connection, the
kept one when there is one (the keeper runs `handle`), else the command's own. Every
request names its stage, so removing one first cancels the transfers still running into
it: a Ctrl-C'd upload cannot recreate what the removal took.
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Any

import asyncssh

from backend.errors import BoxuiError
from backend.hosts.ssh_link import SshLink

#: the remote boxui's hidden command that makes a stage and prints its path
STAGE_ARGV = ["boxui", "host", "stage"]
#: a stage's leaf, as `boxui host stage` names it: what `rm` agrees to remove
STAGE_PREFIX = "stage-"


class StagingError(BoxuiError):
    code = "remote"


async def make_stage(link: SshLink) -> str:
    """A new stage on the host: its absolute path."""
    done = await link.run(STAGE_ARGV)
    path = done.stdout.strip()
    if done.exit_status != 0 or not path.startswith("/"):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1].removeprefix("boxui: ") if lines else f"exit {done.exit_status}"
        raise StagingError(f"host {link.host.name}: cannot make a staging dir there: {why}")
    return path


def _inside(stage: str, path: str) -> str:
    """`path` if it lies in `stage`, which is a stage: nothing else is moved or removed."""
    stage = posixpath.normpath(stage)
    if not posixpath.basename(stage).startswith(STAGE_PREFIX) or not stage.startswith("/"):
        raise StagingError(f"{stage}: not a staging dir")
    norm = posixpath.normpath(path)
    if norm != stage and not norm.startswith(stage + "/"):
        raise StagingError(f"{path}: not in staging dir {stage}")
    return norm


async def transfer(link: SshLink, asked: dict[str, Any]) -> dict[str, Any]:
    """One SFTP request: `put` (LOCAL into REMOTE), `get` (REMOTE to LOCAL), `mkdir`,
    `list` (REMOTE's entries and kinds) or `rm` (the stage, whole)."""
    stage = str(asked["stage"])
    remote = _inside(stage, str(asked.get("remote") or stage))
    action, local = str(asked["action"]), str(asked.get("local") or "")
    if action == "rm":  # by a command, which needs no SFTP server: gone whatever failed
        done = await link.run(["rm", "-rf", "--", remote])
        if done.exit_status != 0:
            raise StagingError(f"host {link.host.name}: rm {remote}: {done.stderr.strip()}")
        return {}
    conn = await link.connection()
    try:
        sftp_client = await conn.start_sftp_client()
    except (OSError, asyncssh.Error) as exc:
        raise StagingError(f"host {link.host.name} serves no SFTP, which moving files there "
                           f"needs ({getattr(exc, 'reason', exc)}); its sshd_config wants "
                           "`Subsystem sftp ...`") from None
    try:
        async with sftp_client as sftp:
            if action == "put":
                await sftp.put(local, remote, recurse=True, preserve=True)
            elif action == "get":
                await sftp.get(remote, local, recurse=True, preserve=True)
            elif action == "mkdir":
                await sftp.mkdir(remote, asyncssh.SFTPAttrs(permissions=0o700))
            elif action == "list":
                return {"entries": {entry.filename: entry.attrs.type
                                    == asyncssh.FILEXFER_TYPE_DIRECTORY
                                    for entry in await sftp.readdir(remote)
                                    if entry.filename not in (".", "..")}}
    except (OSError, asyncssh.Error) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise StagingError(f"host {link.host.name}: {action} {local or remote}: "
                           f"{reason}") from None
    return {}


class Transfers:
    """The transfers running per stage, so that removing a stage waits them out."""

    def __init__(self) -> None:
        self.running: dict[str, set[asyncio.Task[dict[str, Any]]]] = {}

    async def handle(self, link: SshLink, asked: dict[str, Any]) -> dict[str, Any]:
        """`asked` (`make`, or a `transfer` request) on `link`; its answer."""
        if asked["action"] == "make":
            return {"stage": await make_stage(link)}
        stage = str(asked["stage"])
        if asked["action"] == "rm":
            for task in self.running.pop(stage, set()):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        task = asyncio.ensure_future(transfer(link, asked))
        self.running.setdefault(stage, set()).add(task)
        try:
            return await task
        finally:
            running = self.running.get(stage, set())
            running.discard(task)
            if not running:
                self.running.pop(stage, None)


async def handle_once(link: SshLink, asked: dict[str, Any]) -> dict[str, Any]:
    """One request on a connection of its own (kept connections are off)."""
    try:
        return await Transfers().handle(link, asked)
    finally:
        await link.close()
