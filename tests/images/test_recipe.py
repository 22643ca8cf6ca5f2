"""Recipes: the shipped ones, the user's own, and errors that name the file and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.images.errors import RecipeError
from backend.images.recipe import load_recipe, shipped_names
from backend.state.state_dir import StateDir

BASE = {"systemd-sysv", "udev", "openssh-server", "sudo", "ca-certificates", "curl", "less",
        "iproute2", "kmod"}


def test_shipped_recipes(dirs: StateDir) -> None:
    assert {"debian-12", "debian-12-build"} <= set(shipped_names())
    plain = load_recipe(dirs, "debian-12")
    assert set(plain.packages) == BASE and plain.suite == "bookworm"
    build = load_recipe(dirs, "debian-12-build")
    assert set(build.packages) == BASE | {"build-essential", "git", "make", "pkg-config",
                                          "python3"}
    assert plain.sources() == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://security.debian.org/debian-security bookworm-security main"]


def write(dirs: StateDir, name: str, text: str) -> Path:
    folder = dirs.images / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_user_recipe_with_files_and_commands(dirs: StateDir) -> None:
    write(dirs, "mine", 'suite = "trixie"\npackages = ["git", "gcc-12=12.2.0-14"]\n'
          'run = ["apt-get clean"]\n[[files]]\npath = "/etc/motd"\ncontent = "hi"\n'
          'mode = "0600"\n[[files]]\npath = "/usr/local/bin/x"\ncontent = ""\n'
          'mode = 0o755\n')
    recipe = load_recipe(dirs, "mine")
    assert recipe.name == "mine" and recipe.suite == "trixie"
    assert [(f.path, f.mode) for f in recipe.files] == [("/etc/motd", 0o600),
                                                        ("/usr/local/bin/x", 0o755)]


def test_user_recipe_takes_precedence(dirs: StateDir) -> None:
    write(dirs, "debian-12", 'packages = ["vim"]\n')
    assert load_recipe(dirs, "debian-12").packages == ["vim"]


@pytest.mark.parametrize(("text", "field"), [
    ('packages = ["ok", "Not A Package"]\n', "'packages.1'"),
    ('pakages = ["git"]\n', "'pakages'"),
    ('suite = "../etc"\n', "'suite'"),
    ('mirror = "ftp://x"\n', "'mirror'"),
    ('run = [""]\n', "'run.0'"),
    ('[[files]]\npath = "etc/motd"\ncontent = ""\n', "'files.0.path'"),
    ('[[files]]\npath = "/lib/x"\ncontent = ""\n', "'files.0.path'"),
    ('[[files]]\npath = "/etc/../x"\ncontent = ""\n', "'files.0.path'"),
    ('[[files]]\npath = "/etc/x"\ncontent = ""\nmode = "rwx"\n', "'files.0.mode'"),
    ('name = "other"\n', "'name'"),
])
def test_errors_name_the_file_and_field(dirs: StateDir, text: str, field: str) -> None:
    path = write(dirs, "bad", text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(dirs, "bad")
    message = str(caught.value)
    assert message.startswith(f"{path}: field {field}") and "\n" not in message


def test_bad_toml_and_unknown_and_invalid_names(dirs: StateDir) -> None:
    path = write(dirs, "bad", "packages = [\n")
    with pytest.raises(RecipeError, match=f"^{re.escape(str(path))}: not valid TOML"):
        load_recipe(dirs, "bad")
    with pytest.raises(RecipeError, match=r"no image recipe named 'nosuch'.*debian-12"):
        load_recipe(dirs, "nosuch")
    for name in ("Bad", "../x", "-x", ""):
        with pytest.raises(RecipeError, match="invalid image name"):
            load_recipe(dirs, name)
