"""`$BOXUI_HOME/ui.toml`, the part a user writes by hand: `[keys]` rebinds the app's keys
by action (`start = "S"`, `delete = "ctrl+d,delete"`) and `[aliases]` adds command-line
words (`dbs = "machines /~^db"`, `up = "start"`).

Validated like the theme files: a mistake skips the section it is in and is reported
once, naming the file and the key, instead of stopping the app or being ignored
silently. The `theme` key the app itself writes lives in the same file and is left to
`themes.py`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from textual.keys import Keys, _character_to_key

from backend.state.validation_text import describe_validation_error

UI_FILE = "ui.toml"
_MODIFIER = re.compile(r"^(?:(?:ctrl|shift|alt|super|meta)\+)*(.+)$")
_NAMED_KEYS = {k.value for k in Keys} | {
    "space", "tab", "enter", "escape", "backspace", "delete", "insert", "home", "end",
    "pageup", "pagedown", "up", "down", "left", "right",
} | {f"f{n}" for n in range(1, 25)} | {_character_to_key(chr(c)) for c in range(33, 127)}
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _key_list(value: str) -> str:
    """`"x, ctrl+k"`: every comma-separated key must be a key Textual knows."""
    keys = [k.strip() for k in value.split(",")]
    for key in keys:
        match = _MODIFIER.match(key)
        base = match.group(1) if match else ""
        if not (len(base) == 1 and base.isprintable()) and base not in _NAMED_KEYS:
            raise ValueError(f"{key!r} is not a key (a character, or a name such as "
                             "ctrl+x, f5, space, escape)")
    return ",".join(keys)


def _alias_name(value: str) -> str:
    if not _ALIAS.match(value):
        raise ValueError(f"{value!r}: an alias is a lower-case word")
    return value


KeyList = Annotated[str, AfterValidator(_key_list)]


class UiFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    keys: dict[str, KeyList] = {}
    aliases: dict[Annotated[str, AfterValidator(_alias_name)], str] = {}


def load_ui_file(home: Path, actions: Iterable[str]) -> tuple[UiFile, list[str]]:
    """The user's keys and aliases, and one message per problem (the section with the
    problem is dropped, the rest kept). `actions`: the binding ids `[keys]` may name."""
    path = home / UI_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UiFile(), []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return UiFile(), [f"{path}: {exc}"]
    problems: list[str] = []
    sections: dict[str, object] = {}
    for section in ("keys", "aliases"):
        if section not in data:
            continue
        try:
            UiFile.model_validate({section: data[section]})
        except ValidationError as exc:
            problems.append(f"{path}: {describe_validation_error(exc)}")
            continue
        sections[section] = data[section]
    ui = UiFile.model_validate(sections)
    known = set(actions)
    unknown = sorted(set(ui.keys) - known)
    if unknown:
        problems.append(f"{path}: key 'keys.{unknown[0]}': no such action (one of: "
                        f"{', '.join(sorted(known))})")
        ui = ui.model_copy(update={"keys": {}})
    return ui, problems
