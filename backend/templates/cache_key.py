"""The cache key of one variant's build: SHA-256 over exactly the inputs that decide
what the build produces.

The key covers the base image's content hash, the profile and the role: whatever of
the three changes, the build produces something else. A memory snapshot additionally
bakes in everything on the QEMU command line that must match at restore (vcpus,
memory, kernel parameters, the accelerator, the guest's name), so those are part of the
key too: change any of them and the old snapshot is not a valid answer. Names of inputs
are hashed with their values (canonical JSON), so no two different input sets can
collide by concatenation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from backend.state.accelerator import BuildAccel

#: Bump when a build of the same inputs would produce something different.
TEMPLATE_BUILDER_VERSION = "boxui-template/4"  # 3: RAM in its own file; 4: clock, hostname


@dataclass(frozen=True)
class BuildInputs:
    image_hash: str
    profile: str
    role: str
    name: str
    vcpus: int
    memory_mib: int
    data_disk_mib: int
    boot_args: str
    #: "snapshot" or "image": a snapshot build produces more than an image build
    kind: str
    #: the accelerator a snapshot is taken under ("" for an image build)
    accel: BuildAccel


def cache_key(inputs: BuildInputs) -> str:
    canonical = json.dumps({"builder": TEMPLATE_BUILDER_VERSION, **asdict(inputs)},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def revision_id(template_id: str, keys: list[str]) -> str:
    """A revision is named after its variants' keys: the same inputs give the same
    revision, which is what makes a repeated build a cache hit."""
    digest = hashlib.sha256(template_id.encode() + b"\0" + "\0".join(sorted(keys)).encode())
    return digest.hexdigest()[:16]
