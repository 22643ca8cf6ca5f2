"""Finding and fetching the Debian packages the guest image is made of.

Candidates are looked up first (`apt-cache`), so the .deb cache can be checked by apt's
exact file name and only what is missing is downloaded. Every download is verified
against the SHA-256 apt itself publishes, and lands in the cache by rename, so a
truncated file can never be mistaken for a cached one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backend.guest.errors import GuestImageError
from backend.guest.tools import require_tool, run
from backend.state.atomic_write import fsync_dir, fsync_file

KERNEL_META_PACKAGE = "linux-image-amd64"
#: The plain (signed) flavour: not -unsigned, -dbg, -cloud or -rt.
KERNEL_PACKAGE_RE = re.compile(r"linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-amd64")

USERLAND_PACKAGES: tuple[str, ...] = (
    "busybox-static",
    "dropbear-bin",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
    "libcrypt1",
    "libc6",
)


@dataclass(frozen=True)
class Candidate:
    """The version apt would install now, and where its .deb lives in our cache."""

    package: str
    version: str
    architecture: str
    sha256: str

    @property
    def deb_filename(self) -> str:
        """The name `apt-get download` gives the file (an epoch's ':' becomes '%3a')."""
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def parse_depends(text: str) -> list[str]:
    """Package names from `apt-cache depends` output (Depends lines only)."""
    found: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.strip().lstrip("|").partition(":")
        if sep and key.strip() == "Depends":
            found.append(value.strip().strip("<>"))
    return found


def pick_kernel_package(names: Iterable[str]) -> str | None:
    """The newest plain `linux-image-X.Y.Z-N-amd64` among `names`, or None."""
    versioned = [
        (tuple(int(part) for part in match.groups()), name)
        for name in names
        if (match := KERNEL_PACKAGE_RE.fullmatch(name))
    ]
    return max(versioned)[1] if versioned else None


def parse_show(text: str) -> dict[str, Candidate]:
    """Candidates from `apt-cache show --no-all-versions` stanzas, keyed by package."""
    result: dict[str, Candidate] = {}
    for stanza in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace():
                continue  # continuation of a multi-line field we do not need
            key, sep, value = line.partition(":")
            if sep:
                fields[key] = value.strip()
        try:
            cand = Candidate(
                fields["Package"], fields["Version"], fields["Architecture"], fields["SHA256"]
            )
        except KeyError:
            continue
        result.setdefault(cand.package, cand)
    return result


async def resolve_kernel_package() -> str:
    """Name the kernel package the `linux-image-amd64` meta package points at now."""
    apt_cache = require_tool("apt-cache")
    out = await run(
        [apt_cache, "depends", KERNEL_META_PACKAGE], what=f"apt-cache depends {KERNEL_META_PACKAGE}"
    )
    chosen = pick_kernel_package(parse_depends(out.decode()))
    if chosen is None:  # meta package unknown: fall back to the newest listed kernel
        names = await run([apt_cache, "pkgnames", "linux-image-"], what="apt-cache pkgnames")
        chosen = pick_kernel_package(names.decode().split())
    if chosen is None:
        raise GuestImageError(
            "no linux-image-*-amd64 package known to apt: run `apt-get update` first"
        )
    return chosen


async def candidates(packages: Iterable[str]) -> dict[str, Candidate]:
    """Look up the candidate version of each package; name any apt does not know."""
    wanted = list(packages)
    apt_cache = require_tool("apt-cache")
    # apt-cache show fails as a whole if one name is unknown, so ask one by one on error
    try:
        out = await run([apt_cache, "show", "--no-all-versions", *wanted], what="apt-cache show")
        found = parse_show(out.decode())
    except GuestImageError:
        found = {}
        for name in wanted:
            try:
                one = await run(
                    [apt_cache, "show", "--no-all-versions", name], what=f"apt-cache show {name}"
                )
            except GuestImageError:
                continue
            found.update(parse_show(one.decode()))
    missing = [name for name in wanted if name not in found]
    if missing:
        raise GuestImageError(
            f"apt knows no installable {', '.join(missing)}: run `apt-get update` first"
        )
    return {name: found[name] for name in wanted}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _give_to_apt_sandbox(directory: Path) -> None:
    """Let apt's unprivileged `_apt` user write here, so apt does not warn as root."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError, OSError):
        os.chown(directory, pwd.getpwnam("_apt").pw_uid, -1)


async def ensure_debs(
    debs_dir: Path, wanted: dict[str, Candidate]
) -> tuple[dict[str, Path], list[str]]:
    """Make sure every candidate's .deb is in `debs_dir`; return paths and what was fetched.

    A cached file whose SHA-256 does not match apt's is treated as missing.
    """
    await asyncio.to_thread(debs_dir.mkdir, parents=True, exist_ok=True)
    paths = {name: debs_dir / cand.deb_filename for name, cand in wanted.items()}
    missing = [
        name
        for name, cand in wanted.items()
        if not paths[name].is_file()
        or await asyncio.to_thread(sha256_file, paths[name]) != cand.sha256
    ]
    if not missing:
        return paths, []
    apt_get = require_tool("apt-get")
    download_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=debs_dir))
    try:
        _give_to_apt_sandbox(download_dir)
        for name in missing:
            cand = wanted[name]
            # one package per call so a failure names the package that failed
            await run(
                [apt_get, "download", "-q", f"{name}={cand.version}"],
                cwd=download_dir,
                what=f"downloading {name} {cand.version}",
            )
            got = download_dir / cand.deb_filename
            if not got.is_file():
                raise GuestImageError(f"downloading {name}: apt-get left no {cand.deb_filename}")
            if await asyncio.to_thread(sha256_file, got) != cand.sha256:
                raise GuestImageError(f"downloading {name}: SHA-256 does not match apt's index")
            fsync_file(got)
            os.replace(got, paths[name])
        fsync_dir(debs_dir)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    return paths, missing


def prune_debs(debs_dir: Path, current: dict[str, Candidate]) -> list[Path]:
    """Delete cached .debs of our packages that are no longer the candidate version.

    Built images keep their own copies of what they need, so old .debs are dead weight
    (a superseded kernel .deb alone is ~70 MB).
    """
    keep = {cand.deb_filename for cand in current.values()}
    removed: list[Path] = []
    for path in debs_dir.glob("*.deb"):
        package = path.name.split("_", 1)[0]
        ours = package in current or KERNEL_PACKAGE_RE.fullmatch(package) is not None
        if ours and path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
