"""Files in and out of a machine: `boxui cp` (SFTP) each way, and a shared folder's
(virtio-9p) read and write, of the same file.

    .venv/bin/python bench/files.py [--mb 100] [--image debian-12] [--cache DIR]

One run: it starts a Debian machine (`cp` needs the guest's `sftp-server`; the default
busybox guest has none) on a temporary state dir with a host folder mounted at /share,
makes a file of random bytes, then times, as whole commands a user would run:
- cp in: `boxui cp FILE vm:/root/blob`;
- cp out: `boxui cp vm:/root/blob FILE`;
- 9p write: `boxui exec vm -- sh -c 'cat /root/blob > /share/w && sync'`;
- 9p read: `boxui exec vm -- sh -c 'cat /share/r > /dev/null'` (a copy the host put in
  the folder, so it is read through 9p, not the guest's cache).
The guest's page cache is dropped before each read of the guest's disk or of the share,
and every copy is checked byte for byte. `boxui exec vm -- true` is timed too: it is the
part of the exec rows that is not moving data. There is no target: it prints the figures.
Without --image, the small Debian image the tests build (tests/debian_image.py) is used.
Then it removes the machine and stops the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.drivers.qemu.accel import resolve_accel
from tests.debian_image import IMAGE_NAME, build_image

BOXUI = [str(Path(sys.executable).with_name("boxui"))]
DEFAULT_CACHE = Path(os.environ.get("BOXUI_GUEST_CACHE", "/tmp/boxui-guest-cache"))
DROP_CACHES = "sync && echo 3 > /proc/sys/vm/drop_caches"


def run(env: dict[str, str], *args: str, timeout: float = 900) -> float:
    """Seconds for one whole `boxui` process; it must succeed."""
    started = time.perf_counter()
    out = subprocess.run([*BOXUI, *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"boxui {' '.join(args)} failed ({out.returncode}): "
                         f"{out.stderr.strip()}")
    return elapsed


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def state_dir(cache: Path) -> Iterator[Path]:
    """A short state dir (QMP socket paths are limited) sharing the built images."""
    home = Path(tempfile.mkdtemp(prefix="bxf-", dir="/tmp"))
    (home / "images").symlink_to(cache)
    env = dict(os.environ, BOXUI_HOME=str(home))
    try:
        yield home
    finally:
        subprocess.run([*BOXUI, "rm", "--force", "vm"], env=env, capture_output=True,
                       timeout=120, check=False)
        subprocess.run([*BOXUI, "daemon", "stop"], env=env, capture_output=True,
                       timeout=60, check=False)
        shutil.rmtree(home, ignore_errors=True)


def measure(env: dict[str, str], scratch: Path, share: Path, size: int) -> list[tuple[str, float]]:
    source, back = scratch / "blob", scratch / "back"
    with source.open("wb") as handle:
        for _ in range(size >> 20):
            handle.write(os.urandom(1 << 20))
    shutil.copyfile(source, share / "r")
    want = sha256(source)
    rows = [("cp in (SFTP)", run(env, "cp", str(source), "vm:/root/blob"))]
    run(env, "exec", "vm", "--", "sh", "-c", DROP_CACHES)
    rows.append(("cp out (SFTP)", run(env, "cp", "vm:/root/blob", str(back))))
    if sha256(back) != want:
        raise SystemExit("cp out: the file that came back differs")
    run(env, "exec", "vm", "--", "sh", "-c", DROP_CACHES)
    rows.append(("9p write", run(env, "exec", "vm", "--", "sh", "-c",
                                 "cat /root/blob > /share/w && sync")))
    if sha256(share / "w") != want:
        raise SystemExit("9p write: the host's copy differs")
    run(env, "exec", "vm", "--", "sh", "-c", DROP_CACHES)
    rows.append(("9p read", run(env, "exec", "vm", "--", "sh", "-c", "cat /share/r > /dev/null")))
    check = subprocess.run([*BOXUI, "exec", "vm", "--", "sha256sum", "/share/r"], env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    if check.stdout.split()[:1] != [want]:
        raise SystemExit("9p read: the guest read something else")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="file size in MB (MiB)")
    parser.add_argument("--image", help="an OS image already built in the cache "
                        f"[default: {IMAGE_NAME}, built here if need be]")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    image = args.image or build_image(args.cache).name
    size = args.mb << 20
    with state_dir(args.cache) as home, \
            tempfile.TemporaryDirectory(prefix="bxf-", dir="/var/tmp") as tmp:
        env = dict(os.environ, BOXUI_HOME=str(home))
        scratch, share = Path(tmp) / "scratch", Path(tmp) / "share"
        scratch.mkdir()
        share.mkdir()
        boot = run(env, "create", "vm", "--image", image, "--disk", "4G", "--memory", "1024",
                   "--mount", f"{share}:/share")
        baseline = min(run(env, "exec", "vm", "--", "true") for _ in range(3))
        rows = measure(env, scratch, share, size)
    accel = resolve_accel("auto").accel.upper()  # what boxui will use, as it decides
    print(f"files in and out, {args.mb} MiB, image {image}, {accel}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; boot to ready {boot:.1f} s")
    print(f"{'operation':<16}{'seconds':>9}{'MB/s':>9}   whole command")
    for label, seconds in rows:
        print(f"{label:<16}{seconds:>9.2f}{args.mb / seconds:>9.1f}")
    print(f"{'exec true':<16}{baseline:>9.2f}{'':>9}   (the exec rows' share not moving data)")


if __name__ == "__main__":
    main()
