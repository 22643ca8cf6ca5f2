"""bin/setup's `kernel_built` answers as find_small_kernel does, on a kernel the real
builder wrote: every bin/boxui run asks it, in bash, so that it need not start Python."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from backend.guest import small_kernel
from backend.guest.small_kernel import KERNEL_FILE, config_digest, find_small_kernel
from tests.conftest import REPO


def setup_says_built(cache: Path) -> bool:
    """Run bin/setup's own `kernel_built` function (cut out of the script) on `cache`."""
    script = (REPO / "bin" / "setup").read_text()
    start = script.index("kernel_built() {")
    function = script[start:script.index("\n}\n", start) + 3]
    env = {**os.environ, "BOXUI_KERNEL_CACHE": str(cache)}
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{function}kernel_built"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def build_fake_kernel(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The builder's own publishing step, with the compile replaced by a file."""
    def compile_nothing(work: Path, jobs: int, log: Path, tree: Path | None) -> tuple[Path, str]:
        vmlinux = work / "built"
        vmlinux.write_bytes(b"a kernel")
        return vmlinux, "6.1.0-boxui"

    monkeypatch.setattr(small_kernel, "_compile", compile_nothing)
    cache.mkdir()
    final = cache / "key"
    small_kernel._build_locked(cache, final, config_digest(), "6.1.0-1", 1,
                               cache / "log", lambda _m: None, None)
    return final


def test_setup_finds_the_kernel_exactly_when_boxui_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOXUI_GUEST_KERNEL", raising=False)
    cache = tmp_path / "kernels"
    assert not setup_says_built(tmp_path / "nothing here")
    built = build_fake_kernel(cache, monkeypatch)
    assert find_small_kernel(cache) is not None
    assert setup_says_built(cache)

    info = built / "kernel.json"
    recorded = json.loads(info.read_text())
    info.write_text(json.dumps({**recorded, "config_sha256": "0" * 64}, indent=2))
    assert find_small_kernel(cache) is None
    assert not setup_says_built(cache)  # another configuration's kernel

    info.write_text(json.dumps(recorded, indent=2))
    (built / KERNEL_FILE).unlink()
    assert find_small_kernel(cache) is None
    assert not setup_says_built(cache)  # its kernel.json alone
