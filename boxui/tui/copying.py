"""A file copy as `boxui cp` does it, for either backend: straight over SSH to the
guest's SFTP server from this process, with the keys in the state dir, never through the
daemon (which would hold the whole file in a JSON body). The app and the daemon share the
state dir, so both backends copy the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.machine_store import MachineStore
from backend.state.state_dir import open_state_dir
from backend.supervision.file_copy import Progress, Remote, copy_files, parse_endpoint, plan
from boxui.ssh_commands import machine_target


async def copy_over_ssh(home: Path, name: str, source: str, target: str, *,
                        recursive: bool, progress: Progress | None = None) -> None:
    src, dst = parse_endpoint(source), parse_endpoint(target)
    plan(src, dst)  # one side local, one on the machine: refused before connecting
    remote = src if isinstance(src, Remote) else dst
    assert isinstance(remote, Remote)
    if remote.machine != name:
        raise BoxuiError(f"copy: {remote.machine} is not {name}")
    machine = await asyncio.to_thread(machine_target, name, home)
    dirs = await asyncio.to_thread(open_state_dir, home)
    spec = (await asyncio.to_thread(MachineStore(dirs).load, name)).spec
    default_guest = spec is not None and spec.image is None and spec.kernel is None
    await copy_files(machine.port, machine.keys, machine.machine_dir, src, dst,
                     recursive=recursive, progress=progress, default_guest=default_guest)
