"""Stand-in build tools: the fake mmdebstrap, a fixed index and a small modules tree."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from backend.images.builder import BuildTools
from backend.images.kernel import KernelModules, ProgressFn
from backend.state.state_dir import StateDir

FAKE = Path(__file__).with_name("fake_mmdebstrap.py")
KERNEL_VERSION = "6.1.0-test"


@dataclass
class Stand:
    """Tools whose inputs a test can change: the index digest, the fake's behaviour."""

    root: Path
    digest: str = "index-1"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def record(self) -> Path:
        return self.root / "calls.jsonl"

    def calls(self) -> list[dict[str, object]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    async def kernel(self, dirs: StateDir, report: ProgressFn) -> KernelModules:
        tree = self.root / "modules"
        (tree / "kernel" / "fs").mkdir(parents=True, exist_ok=True)
        (tree / "kernel" / "fs" / "ext4.ko").write_bytes(b"\x7fELF")
        (tree / "kernel" / "sound").mkdir(exist_ok=True)
        (tree / "kernel" / "sound" / "snd.ko").write_bytes(b"\x7fELF")
        (tree / "modules.order").write_text("kernel/fs/ext4.ko\n")
        return KernelModules(version=KERNEL_VERSION, tree=tree)

    async def index(self, sources: list[str]) -> dict[str, str]:
        return {source: self.digest for source in sources}

    def tools(self) -> BuildTools:
        wrapper = self.root / "mmdebstrap"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
        wrapper.chmod(0o755)
        return BuildTools(kernel=self.kernel, index=self.index, mmdebstrap=str(wrapper))


def debugfs(image: Path, command: str) -> str:
    import subprocess

    return subprocess.run(["debugfs", "-R", command, str(image)], capture_output=True,
                          text=True, check=True, timeout=30).stdout
