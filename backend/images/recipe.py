"""Image recipes: TOML data, shipped with boxui (`recipes/`) or the user's own under
`<state>/images/recipes/NAME.toml`, which take precedence over a shipped one of the
same name.

A recipe is the whole input of a build besides Debian's archive, so it is strict:
unknown keys are errors, and every error names the file and the field in one line.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from backend.images.errors import RecipeError
from backend.state.names import NAME_RULE, is_valid_name
from backend.state.state_dir import StateDir

#: Debian package names (policy 5.6.1), optionally pinned: `name=version`
PackageName = Annotated[str, StringConstraints(
    pattern=r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$", max_length=200)]
#: Where usrmerge put symlinks: a file written "through" one would replace the link.
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://security.debian.org/debian-security"


class RecipeFile(BaseModel):
    """A file put into the image before the recipe's commands run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    content: str
    mode: Annotated[int, Field(ge=0, le=0o7777)] = 0o644

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        """`mode = "0755"` reads as octal, as chmod does; a bare TOML integer is taken
        as written (TOML has 0o755 for octal)."""
        if isinstance(value, str):
            if not re.fullmatch(r"0?[0-7]{3,4}", value):
                raise ValueError("must be an octal mode like \"0644\"")
            return int(value, 8)
        return value

    @field_validator("path")
    @classmethod
    def _guest_path(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts or len(path.parts) < 2:
            raise ValueError("must be an absolute path in the image, without '..'")
        if path.parts[1] in _MERGED:
            raise ValueError(f"/{path.parts[1]} is a link to /usr/{path.parts[1]} in "
                             f"Debian 12: write under /usr/{path.parts[1]} instead")
        return str(path)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # from the file name, never from the file
    description: str = ""
    suite: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,30}$")] = "bookworm"
    mirror: Annotated[str, StringConstraints(pattern=r"^(https?|file)://\S+$")] = \
        DEFAULT_MIRROR
    #: also use SUITE-updates and the security archive (what a Debian install has)
    updates: bool = True
    security: bool = True
    packages: list[PackageName] = Field(default_factory=list, max_length=2000)
    files: list[RecipeFile] = Field(default_factory=list, max_length=200)
    #: shell commands run as root inside the image, in order, after `files`
    run: list[Annotated[str, StringConstraints(min_length=1, max_length=10_000)]] = \
        Field(default_factory=list, max_length=100)

    def sources(self) -> list[str]:
        """The apt sources the build uses, and whose index the cache key hashes."""
        lines = [f"deb {self.mirror} {self.suite} main"]
        if self.updates:
            lines.append(f"deb {self.mirror} {self.suite}-updates main")
        if self.security:
            lines.append(f"deb {SECURITY_MIRROR} {self.suite}-security main")
        return lines


def recipes_dir(dirs: StateDir) -> Path:
    return dirs.images / "recipes"


def _shipped(name: str) -> str | None:
    resource = resources.files("backend.images").joinpath("recipes", f"{name}.toml")
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def shipped_names() -> list[str]:
    folder = resources.files("backend.images").joinpath("recipes")
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir()
                  if entry.name.endswith(".toml"))


def user_names(dirs: StateDir) -> list[str]:
    try:
        return sorted(p.stem for p in recipes_dir(dirs).glob("*.toml") if is_valid_name(p.stem))
    except OSError:
        return []


def check_image_name(name: str) -> str:
    if not isinstance(name, str) or not is_valid_name(name):
        raise RecipeError(f"invalid image name {name!r}: use {NAME_RULE}")
    return name


def load_recipe(dirs: StateDir, name: str) -> Recipe:
    """The recipe named `name`: the user's file first, then boxui's own."""
    check_image_name(name)
    user_file = recipes_dir(dirs) / f"{name}.toml"
    try:
        return parse_recipe(user_file.read_text(encoding="utf-8"), user_file, name)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{user_file}: cannot read it: {exc}") from None
    text = _shipped(name)
    if text is None:
        raise RecipeError(f"no image recipe named {name!r}: add {user_file}, or use one of "
                          f"{', '.join(shipped_names())}")
    return parse_recipe(text, Path(f"<boxui>/{name}.toml"), name)


def parse_recipe(text: str, source: Path, name: str) -> Recipe:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: not valid TOML: {exc}") from None
    if "name" in data:
        raise RecipeError(f"{source}: field 'name': not allowed (the file name is the name)")
    try:
        return Recipe.model_validate({**data, "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RecipeError(f"{source}: field {field!r}: {first['msg']}{more}") from None
