"""The cache key of an image: the recipe, the archive's index, the kernel, the builder.

Why the index and not a list of resolved versions: apt resolves a package list against
an index deterministically, and each suite's `InRelease` pins its whole index (it lists
the SHA-256 of every Packages file, and apt verifies its signature at build time). So
hashing the recipe plus each source's `InRelease` covers every version that could be
installed, costs three small downloads (well under a second here) instead of a
simulated install, and needs no apt configuration of the host's own. The price is that
it is conservative: a change to any package of the suite, used or not, is a miss. For a
stable suite that is a point release or a security update, days apart.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import urlparse

import httpx

from backend.images.errors import ImageBuildError
from backend.images.recipe import Recipe
from backend.images.trim import trim_digest

#: Bump whenever the way an image is assembled changes (not its inputs).
BUILDER_VERSION = "boxui-os-image/3"  # 3: /usr and /usr/lib 0755 (they were 0700)
INDEX_TIMEOUT = 30.0


def release_url(source: str) -> str:
    """`deb URL SUITE COMPONENTS...` -> URL/dists/SUITE/InRelease"""
    _deb, url, suite, *_ = source.split()
    return f"{url.rstrip('/')}/dists/{suite}/InRelease"


async def index_digests(sources: list[str]) -> dict[str, str]:
    """SHA-256 of each source's InRelease, fetched now."""
    async with httpx.AsyncClient(timeout=INDEX_TIMEOUT, follow_redirects=True) as client:
        texts = await asyncio.gather(*(_fetch(client, release_url(s)) for s in sources))
    return {source: hashlib.sha256(text).hexdigest() for source, text in zip(
        sources, texts, strict=True)}


async def _fetch(client: httpx.AsyncClient, url: str) -> bytes:
    parsed = urlparse(url)
    try:
        if parsed.scheme == "file":
            return await asyncio.to_thread(Path(parsed.path).read_bytes)
        response = await client.get(url)
        response.raise_for_status()
        return response.content
    except (OSError, httpx.HTTPError) as exc:
        raise ImageBuildError("resolving", f"cannot read {url}: {exc}") from None


def cache_key(recipe: Recipe, digests: dict[str, str], kernel_version: str) -> str:
    """Stable across processes and key order: only what changes the image goes in
    (the trim too: it is data of its own, not the recipe's)."""
    outer = hashlib.sha256()
    parts = [BUILDER_VERSION, recipe.model_dump_json(exclude={"name", "description"}),
             trim_digest(), kernel_version, *(f"{s}\0{digests[s]}" for s in sorted(digests))]
    for part in parts:
        data = part.encode()
        outer.update(b"%d\0" % len(data) + data)
    return outer.hexdigest()
