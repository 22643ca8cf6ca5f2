"""`boxui image` from the command line: listing without a daemon, and bad input refused
in one line before any daemon is started."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BOXUI, background_daemons, cli_env


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=60)


def test_ls_lists_default_and_the_recipes(home: Path) -> None:
    (home / "images" / "recipes").mkdir(parents=True)
    (home / "images" / "recipes" / "mine.toml").write_text('packages = ["git"]\n')
    listed = run(home, "image", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert next(iter(entries)) == "default" and entries["default"]["kind"] == "default"
    assert {"debian-12", "debian-12-build", "mine"} <= set(entries)
    assert entries["mine"]["built"] is False
    text = run(home, "image", "ls")
    assert text.returncode == 0 and text.stdout.startswith("IMAGE")
    assert background_daemons(home) == []


@pytest.mark.parametrize(("args", "message"), [
    (("image", "build", "nosuch"), "boxui: no image recipe named 'nosuch'"),
    (("image", "build", "broken"), "broken.toml: field 'packages.0'"),
    (("image", "rm", "default"), "boxui: boxui's default guest cannot be removed"),
])
def test_bad_input_is_one_line_and_starts_no_daemon(home: Path, args: tuple[str, ...],
                                                    message: str) -> None:
    (home / "images" / "recipes").mkdir(parents=True)
    (home / "images" / "recipes" / "broken.toml").write_text('packages = ["No"]\n')
    done = run(home, *args)
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert background_daemons(home) == []


def test_invalid_image_name_is_a_usage_error(home: Path) -> None:
    done = run(home, "image", "build", "Bad")
    assert done.returncode == 2 and "invalid image name 'Bad'" in done.stderr
