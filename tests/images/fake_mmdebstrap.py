"""A stand-in for mmdebstrap: prints the lines the real one prints and writes a small
root filesystem tar. `FAKE_MMDEBSTRAP` picks a behaviour: ok (default), missing-package,
dpkg-error, no-space, hang (writes part of the tar, then waits to be killed)."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

STATUS = "".join(f"Package: p{i}\nStatus: install ok installed\n\n" for i in range(3))
LINES_HEAD = """I: automatically chosen mode: unshare
I: running apt-get update...
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
I: downloading packages with apt...
0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 bash amd64 5.2.15-2 [1491 kB]
Get:3 http://deb.debian.org/debian bookworm/main amd64 openssh-server amd64 1:9.2p1 [456 kB]
I: extracting archives...
Unpacking libc6:amd64 (2.36-9) ...
Unpacking bash (5.2.15-2) ...
Unpacking openssh-server (1:9.2p1) ...
"""
LINES_TAIL = """Setting up libc6:amd64 (2.36-9) ...
Setting up bash (5.2.15-2) ...
Setting up openssh-server (1:9.2p1) ...
I: running --customize-hook in shell: sh -c 'chroot "$1" depmod -a 6.1.0-test' exec /tmp
I: cleaning package lists and apt cache...
I: success in 1.0 seconds
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", *, link: str | None = None,
         mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.mode = mode
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif name.endswith("/"):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_root(path: Path, padding: int = 0) -> None:
    with tarfile.open(path, "w") as tar:
        for directory in ("./etc/", "./etc/ssh/", "./etc/systemd/", "./etc/systemd/system/",
                          "./etc/systemd/system/timers.target.wants/", "./usr/",
                          "./usr/lib/", "./usr/lib/systemd/", "./usr/lib/systemd/system/",
                          "./var/", "./var/lib/", "./var/lib/dpkg/"):
            _add(tar, directory)
        _add(tar, "./lib", link="usr/lib")
        _add(tar, "./etc/ssh/ssh_host_ed25519_key", b"secret", mode=0o600)
        _add(tar, "./etc/ssh/sshd_config", b"# sshd\n")
        _add(tar, "./etc/machine-id", b"0123456789abcdef\n")
        _add(tar, "./usr/lib/systemd/system/apt-daily.timer", b"[Timer]\n")
        _add(tar, "./etc/systemd/system/timers.target.wants/apt-daily.timer",
             link="/lib/systemd/system/apt-daily.timer")
        _add(tar, "./var/lib/dpkg/status", STATUS.encode())
        if padding:
            _add(tar, "./padding", os.urandom(padding))


def main() -> int:
    args = sys.argv[1:]
    record = os.environ.get("FAKE_MMDEBSTRAP_RECORD")
    if record:
        with open(record, "a") as handle:
            handle.write(json.dumps({"argv": args, "pid": os.getpid()}) + "\n")
    mode = os.environ.get("FAKE_MMDEBSTRAP", "ok")
    positional = [a for a in args if not a.startswith("--")]
    tar_path = Path(positional[1])
    out = sys.stdout
    if mode == "missing-package":
        out.write("I: running apt-get update...\nE: Unable to locate package nosuchpkg\n"
                  "E: apt-get install failed\n")
        return 1
    out.write(LINES_HEAD)
    out.flush()
    if mode == "dpkg-error":
        out.write("Setting up libc6:amd64 (2.36-9) ...\ndpkg: error processing package "
                  "openssh-server (--configure):\n installed openssh-server package "
                  "post-installation script subprocess returned error exit status 1\n"
                  "E: Sub-process /usr/bin/dpkg returned an error code (1)\n")
        return 1
    if mode == "no-space":
        out.write("tar: ./usr/bin/bash: Cannot write: No space left on device\n")
        return 1
    if mode == "hang":
        tar_path.write_bytes(b"partial")
        Path(os.environ["FAKE_MMDEBSTRAP_READY"]).write_text(str(os.getpid()))
        time.sleep(600)
        return 1
    write_root(tar_path, int(os.environ.get("FAKE_MMDEBSTRAP_PADDING", "0")))
    out.write(LINES_TAIL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
