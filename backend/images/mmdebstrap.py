"""Running mmdebstrap: its command line, and its output read as progress.

`--mode=unshare` even as root: mmdebstrap then does its mounts (/proc, /dev for dpkg and
the hooks) in a mount namespace of its own, so a build killed at any point leaves no
mount behind on the host, only files in the build's temp dir. It writes a tar, which
keeps the guest's owners exactly (a directory written from a user namespace would not).
Hooks are handed to mmdebstrap as its documented shell-word strings, quoted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
from collections.abc import Callable
from pathlib import Path

from backend.images.errors import ImageBuildError, disk_full
from backend.images.progress import ImageProgress, ProgressParser
from backend.images.recipe import Recipe

#: always installed: the modules boxui adds are useless without kmod's depmod/modprobe
IMPLICIT_PACKAGES = ("kmod",)
_PR_SET_PDEATHSIG = 1


def hooks(recipe: Recipe, overlay: Path, files_dir: Path, kernel_version: str) -> list[str]:
    q = shlex.quote
    found = [f"--customize-hook=sync-in {q(str(overlay))} /",
             f'--customize-hook=chroot "$1" depmod -a {q(kernel_version)}']
    for index, item in enumerate(recipe.files):
        parent = str(Path(item.path).parent)
        found += [f'--customize-hook=chroot "$1" mkdir -p {q(parent)}',
                  f"--customize-hook=upload {q(str(files_dir / str(index)))} {q(item.path)}",
                  f'--customize-hook=chroot "$1" chmod {item.mode:o} {q(item.path)}']
    found += [f'--customize-hook=chroot "$1" /bin/sh -ec {q(command)}'
              for command in recipe.run]
    return found


def argv(tool: str, recipe: Recipe, tar: Path, hook_args: list[str]) -> list[str]:
    packages = list(dict.fromkeys([*recipe.packages, *IMPLICIT_PACKAGES]))
    return [tool, "--verbose", "--mode=unshare", "--variant=minbase", "--format=tar",
            f"--include={','.join(packages)}", *hook_args, recipe.suite, str(tar),
            *recipe.sources()]


def _die_with_parent() -> None:
    """In the child: if boxui is killed (SIGKILL), mmdebstrap goes too."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def run_mmdebstrap(args: list[str], tmpdir: Path,
                         report: Callable[[ImageProgress], None]) -> None:
    """Run it, turning its output into progress; a failure names its step and package.
    Cancelled: the whole process group is killed before this returns."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "LC_ALL": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
        preexec_fn=_die_with_parent,
        # not the state dir's private umask: directories mmdebstrap makes itself (/usr
        # when merging it) would be 0700, and no user but root could run anything
        umask=0o022)
    parser = ProgressParser()
    no_space = False
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            no_space = no_space or "No space left on device" in line
            event = parser.feed(line)
            if event is not None:
                report(event)
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    if code != 0:
        step, package, reason = parser.failure()
        if no_space or disk_full(tmpdir):
            reason = f"no space left on device under {tmpdir.parent}"
        raise ImageBuildError(step, f"{reason} (mmdebstrap exit {code})", package=package)
