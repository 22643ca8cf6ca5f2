"""backend/ must stay usable with no UI: importing all of it loads neither textual nor boxui."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import backend

CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "boxui"))
print(",".join(bad))
"""


def test_backend_imports_no_ui() -> None:
    modules = [m.name for m in pkgutil.walk_packages(backend.__path__, "backend.")]
    assert "backend.state.engine" in modules
    out = subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True,
                         text=True, check=True, cwd=Path(backend.__file__).parent.parent)
    assert out.stdout.strip() == ""


def test_no_shell_strings_in_code() -> None:
    root = Path(backend.__file__).parent.parent
    offenders = []
    for path in [*root.glob("backend/**/*.py"), *root.glob("boxui/**/*.py")]:
        text = path.read_text()
        for needle in ("shell=True", "os.system(", "os.popen(", "create_subprocess_shell"):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


RECOVERY_PATH = """
import sys
import boxui.cli.daemon_cmds, boxui.daemon.serve
import backend.supervision.supervisor, backend.supervision.crash_recovery
import backend.drivers.qemu.driver
print(",".join(sorted(m for m in ("asyncssh", "fastapi", "uvicorn", "textual")
                      if m in sys.modules)))
"""


def test_daemon_recovers_before_loading_ssh_and_the_web_stack() -> None:
    """A daemon re-adopts machines before it imports asyncssh or the API (half a second of
    imports): every module on the way to crash recovery keeps them out."""
    out = subprocess.run([sys.executable, "-c", RECOVERY_PATH], capture_output=True,
                         text=True, check=True, cwd=Path(backend.__file__).parent.parent)
    assert out.stdout.strip() == ""
