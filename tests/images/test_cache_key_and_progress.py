"""The cache key's stability, and progress read from mmdebstrap's real output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backend.images import trim
from backend.images.cache_key import cache_key, index_digests, release_url
from backend.images.errors import ImageBuildError
from backend.images.progress import ProgressParser
from backend.images.recipe import Recipe

SOURCES = Recipe().sources()
DIGESTS = {s: f"d{i}" for i, s in enumerate(SOURCES)}


def test_key_is_stable_and_covers_what_changes_the_image() -> None:
    recipe = Recipe(name="a", packages=["git"])
    key = cache_key(recipe, DIGESTS, "6.1.0-1")
    assert key == cache_key(Recipe(name="a", packages=["git"]),
                            dict(reversed(DIGESTS.items())), "6.1.0-1")
    # the name and description are labels, not inputs
    assert key == cache_key(recipe.model_copy(update={"name": "b", "description": "x"}),
                            DIGESTS, "6.1.0-1")
    different = [
        cache_key(Recipe(name="a", packages=["git", "make"]), DIGESTS, "6.1.0-1"),
        cache_key(Recipe(name="a", packages=["git"], run=["true"]), DIGESTS, "6.1.0-1"),
        cache_key(recipe, {**DIGESTS, SOURCES[2]: "changed"}, "6.1.0-1"),
        cache_key(recipe, DIGESTS, "6.1.0-2"),
        cache_key(Recipe(name="a", packages=["git"], security=False),
                  {s: DIGESTS[s] for s in SOURCES[:2]}, "6.1.0-1"),
    ]
    assert len({key, *different}) == 6


def test_a_changed_trim_is_a_new_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trim is data of its own (not the recipe's): changing it must rebuild."""
    recipe = Recipe(name="a", packages=["git"])
    key = cache_key(recipe, DIGESTS, "6.1.0-1")
    monkeypatch.setattr(trim, "MASKED_UNITS", (*trim.MASKED_UNITS, "cron.service"))
    assert cache_key(recipe, DIGESTS, "6.1.0-1") != key


async def test_index_digests_read_each_sources_inrelease(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "dists" / "bookworm").mkdir(parents=True)
    (mirror / "dists" / "bookworm" / "InRelease").write_bytes(b"Suite: bookworm\n")
    source = f"deb file://{mirror} bookworm main"
    assert release_url(source) == f"file://{mirror}/dists/bookworm/InRelease"
    assert await index_digests([source]) == {
        source: hashlib.sha256(b"Suite: bookworm\n").hexdigest()}
    with pytest.raises(ImageBuildError, match="while resolving: cannot read file://"):
        await index_digests([f"deb file://{mirror} trixie main"])


REAL_OUTPUT = """\
I: running apt-get update...
Get:1 http://security.debian.org/debian-security bookworm-security InRelease [34.8 kB]
Get:4 http://deb.debian.org/debian bookworm/main amd64 Packages [8792 kB]
Fetched 9422 kB in 5s (2062 kB/s)
I: downloading packages with apt...
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Need to get 29.7 MB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 gcc-12-base amd64 12.2.0-14+deb12u1 [37.6 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9+deb12u14 [2757 kB]
I: extracting archives...
I: installing essential packages...
Unpacking gcc-12-base:amd64 (12.2.0-14+deb12u1) ...
Setting up gcc-12-base:amd64 (12.2.0-14+deb12u1) ...
Unpacking libc6:amd64 (2.36-9+deb12u14) ...
Setting up libc6:amd64 (2.36-9+deb12u14) ...
I: installing remaining packages inside the chroot...
0 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Get:1 http://deb.debian.org/debian bookworm/main amd64 curl amd64 7.88.1-10+deb12u15 [316 kB]
Unpacking curl (7.88.1-10+deb12u15) ...
Setting up curl (7.88.1-10+deb12u15) ...
I: cleaning package lists and apt cache...
"""


def test_progress_from_real_output() -> None:
    parser = ProgressParser()
    events = [e for line in REAL_OUTPUT.splitlines() if (e := parser.feed(line))]
    counted = [(e.step, e.done, e.total, e.package) for e in events if e.done]
    assert counted == [
        ("downloading", 1, 2, "gcc-12-base"), ("downloading", 2, 2, "libc6"),
        ("unpacking", 1, 2, "gcc-12-base"), ("configuring", 1, 2, "gcc-12-base"),
        ("unpacking", 2, 2, "libc6"), ("configuring", 2, 2, "libc6"),
        ("downloading", 3, 3, "curl"), ("unpacking", 3, 3, "curl"),
        ("configuring", 3, 3, "curl")]
    assert events[0].step == "resolving" and events[-1].step == "customizing"


@pytest.mark.parametrize(("lines", "step", "package", "reason"), [
    (["I: running apt-get update...", "E: Unable to locate package nosuch"],
     "resolving", "nosuch", "Unable to locate package nosuch"),
    (["I: installing remaining packages inside the chroot...",
      "The following packages have unmet dependencies:",
      " foo : Depends: bar but it is not installable", "E: Unable to correct problems"],
     "resolving", "foo", "Unable to correct problems"),
    (["Get:1 http://x bookworm/main amd64 curl amd64 7.88 [316 kB]",
      "E: Failed to fetch http://x/pool/main/c/curl/curl_7.88_amd64.deb  404  Not Found"],
     "downloading", "curl", "Failed to fetch"),
    (["Setting up a (1) ...", "dpkg: error processing package sshd:amd64 (--configure):"],
     "configuring", "sshd", "dpkg: error processing"),
    (["I: extracting archives...", "something broke"], "unpacking", None, "something broke"),
])
def test_failure_names_step_and_package(lines: list[str], step: str, package: str | None,
                                        reason: str) -> None:
    parser = ProgressParser()
    for line in lines:
        parser.feed(line)
    got_step, got_package, got_reason = parser.failure()
    assert (got_step, got_package) == (step, package)
    assert got_reason.startswith(reason)
