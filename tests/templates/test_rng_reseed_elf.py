from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from backend.guest.rng_reseed_elf import ENTROPY_BYTES, reseed_program


def test_program_is_a_static_elf_carrying_the_entropy() -> None:
    seed = bytes(range(ENTROPY_BYTES))
    program = reseed_program(seed)
    assert program[:4] == b"\x7fELF" and len(program) < 512
    entry = struct.unpack_from("<Q", program, 24)[0]
    assert 0x400000 < entry < 0x400000 + len(program)
    assert struct.pack("<ii", ENTROPY_BYTES * 8, ENTROPY_BYTES) + seed in program
    assert reseed_program() != reseed_program()  # fresh host bytes each time
    with pytest.raises(ValueError):
        reseed_program(b"short")


def test_program_runs_and_reports_by_exit_code(tmp_path: Path) -> None:
    """On the host: as root it re-seeds (0); otherwise the kernel refuses (3)."""
    path = tmp_path / "reseed"
    path.write_bytes(reseed_program())
    path.chmod(0o700)
    status = subprocess.run([str(path)], check=False).returncode
    assert status == (0 if os.geteuid() == 0 else 3)
