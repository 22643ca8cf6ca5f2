"""A cell's files in and out of its guest.

The default guest (busybox and dropbear in RAM) has no `sftp-server`, so for it a file
goes in as the stdin of `cat` run over exec, and comes out as its stdout. A machine made
from an OS image has OpenSSH's `sftp-server`, and there the copy is SFTP
(`supervision.file_copy`), which streams from disk instead of holding the file in memory.
Either way an export is written on the host atomically, under its own name, with its
size and SHA-256 taken from the bytes written.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
from pathlib import Path

from backend.errors import BoxuiError
from backend.guest.machine_seed import load_machine_keys
from backend.state.atomic_write import atomic_write_bytes
from backend.state.cell_projection import Artifact
from backend.supervision.file_copy import Local, Remote, copy_files
from backend.supervision.machine_exec import MachineExec

_WRITE = 'mkdir -p "$(dirname "$1")" && cat > "$1"'


class CellFileError(BoxuiError):
    code = "cell_file"


class GuestFiles:
    def __init__(self, machine_exec: MachineExec, name: str, *, sftp: bool) -> None:
        self.exec = machine_exec
        self.name = name
        self.sftp = sftp

    async def put(self, host_path: str, guest_path: str) -> int:
        """Copy one host file in; its size."""
        if self.sftp:
            await self._shell(["mkdir", "-p", posixpath.dirname(guest_path)], guest_path)
            await self._sftp(Local(host_path), Remote(self.name, guest_path))
            return (await asyncio.to_thread(os.stat, host_path)).st_size
        data = await asyncio.to_thread(Path(host_path).read_bytes)
        await self._shell(["sh", "-c", _WRITE, "sh", guest_path], guest_path, stdin=data)
        return len(data)

    async def get(self, guest_path: str, host_dir: str) -> Artifact:
        """Copy one guest file out into `host_dir`, under its own name."""
        target = Path(host_dir) / posixpath.basename(guest_path)
        if self.sftp:
            part = target.with_name(f".{target.name}.{os.urandom(4).hex()}.part")
            try:
                await self._sftp(Remote(self.name, guest_path), Local(str(part)))
                digest, size = await asyncio.to_thread(_hash_file, part)
                await asyncio.to_thread(os.replace, part, target)
            finally:
                part.unlink(missing_ok=True)
        else:
            data = await self._shell(["cat", guest_path], guest_path)
            await asyncio.to_thread(atomic_write_bytes, target, data, 0o644)
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
        return Artifact(guest_path=guest_path, host_path=str(target), size_bytes=size,
                        sha256=digest)

    async def _shell(self, argv: list[str], about: str, stdin: bytes | None = None) -> bytes:
        _, output = await self.exec.run(self.name, argv, stdin=stdin, origin="run")
        if output.exit_code != 0:
            said = output.stderr.decode("utf-8", "replace").strip().splitlines()
            raise CellFileError(f"{self.name}:{about}: "
                                + (said[-1] if said else f"exit code {output.exit_code}"))
        return output.stdout

    async def _sftp(self, src: Local | Remote, dst: Local | Remote) -> None:
        engine = self.exec.engine
        port = engine.store.load_record(self.name).ssh_port
        if port is None:
            raise CellFileError(f"{self.name} has no SSH port recorded")
        machine_dir = engine.dirs.machine_dir(self.name)
        keys = await asyncio.to_thread(load_machine_keys, machine_dir)
        await copy_files(port, keys, machine_dir, src, dst, recursive=False)


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
