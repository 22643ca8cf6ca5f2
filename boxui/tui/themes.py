"""boxui's colour themes: TOML data files, validated, registered with Textual, watched live.

A theme file sets Textual's base colours plus a `[states]` table with a colour for every
machine state. `ThemeFile.to_theme()` turns it into a `textual.theme.Theme` whose
`variables` carry `state-<name>` for each state, so TCSS can say `color: $state-ready;`
and Textual content markup can say `[$state-ready]ready[/]`. Plain Rich `Text` cannot
resolve `$variables`: use `state_style(theme, state)` for those.

Built-in themes live in `theme_files/` next to this module; users add or override themes
in `$BOXUI_HOME/themes/*.toml`. A broken file is skipped and reported, never fatal. The
chosen theme is remembered in `<state dir>/ui.toml` (key `theme`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, TypeVar

import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from textual.app import App
from textual.color import Color, ColorParseError
from textual.css.parse import parse_declarations
from textual.theme import Theme
from watchfiles import Change, awatch

from backend.errors import BoxuiError
from backend.state.atomic_write import atomic_write_text
from backend.state.lifecycle import InstanceState
from backend.state.state_dir import default_home

DEFAULT_THEME = "boxui-dark"
#: every machine state a theme must colour, in lifecycle order
STATES: tuple[str, ...] = tuple(state.value for state in InstanceState)
#: the repo's built-in themes (absent when boxui is installed without its data files)
BUILTIN_THEMES_DIR = Path(__file__).resolve().parent / "theme_files"
UI_FILE = "ui.toml"
USER_THEMES_SUBDIR = "themes"

#: colours used for a state when the active theme is not a boxui theme (any Textual theme
#: can be chosen from the command palette); also the defaults for `$state-*` in TCSS
FALLBACK_STATE_COLOURS: dict[str, str] = {
    "creating": "#56B6C2",
    "booting": "#61AFEF",
    "ready": "#98C379",
    "busy": "#E5C07B",
    "draining": "#D19A66",
    "stopping": "#9DA5B4",
    "stopped": "#7F848E",
    "failed": "#E06C75",
    "broken": "#C678DD",
    "crashed": "#F44747",
    "unresponsive": "#E85FC0",
    "unhealthy": "#D8D04A",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_VARIABLE_RE = re.compile(r"^[a-z][a-z0-9-]*$")


class ThemeError(BoxuiError):
    """A theme file that cannot be read or is invalid; `str()` is one line."""

    code = "invalid_theme"

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = " ".join(reason.split())
        super().__init__(f"{path}: {self.reason}")


# --- the file format ----------------------------------------------------------------------


def _check_colour(value: str) -> str:
    try:
        return Color.parse(value).hex
    except ColorParseError:
        raise ValueError(f"invalid colour {value!r}") from None


#: a colour as Textual parses it ("#RRGGBB", "#RGB", "rgb(…)", "hsl(…)", a name);
#: stored normalised to "#RRGGBB" (or "#RRGGBBAA" with alpha)
ColourStr = Annotated[str, AfterValidator(_check_colour)]


def _check_variables(value: dict[str, str]) -> dict[str, str]:
    for key, css in value.items():
        if not _VARIABLE_RE.match(key):
            raise ValueError(f"variable name {key!r} must be lowercase words joined by '-'")
        if key.startswith("state-"):
            raise ValueError(f"variable {key!r}: set state colours in [states], not here")
        if not _valid_css_value(css):
            raise ValueError(f"variable {key!r}: {css!r} is not a colour or a text style")
    return value


def _valid_css_value(css: str) -> bool:
    """True if `css` is a value Textual's theme variables take: a colour (optionally with
    an alpha percentage, e.g. "#81a1c1 35%") or a text style ("bold", "reverse", "none")."""
    if not css.strip() or any(ch in css for ch in ";{}$"):
        return False
    for prop in ("color", "text-style"):
        try:
            parse_declarations(f"{prop}: {css};", ("theme", ""))
        except Exception:  # textual raises several unrelated error types here
            continue
        return True
    return False


class StateColours(BaseModel):
    """`[states]`: one colour for every machine state; all required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    creating: ColourStr
    booting: ColourStr
    ready: ColourStr
    busy: ColourStr
    draining: ColourStr
    stopping: ColourStr
    stopped: ColourStr
    failed: ColourStr
    broken: ColourStr
    crashed: ColourStr
    #: newer states: optional, so that a theme written before them still loads
    unresponsive: ColourStr | None = None
    unhealthy: ColourStr | None = None


class ThemeFile(BaseModel):
    """One theme file (`<name>.toml`, built in or in `$BOXUI_HOME/themes/`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME_RE.pattern)]
    dark: bool = True
    primary: ColourStr
    secondary: ColourStr | None = None
    accent: ColourStr | None = None
    warning: ColourStr | None = None
    error: ColourStr | None = None
    success: ColourStr | None = None
    foreground: ColourStr | None = None
    background: ColourStr | None = None
    surface: ColourStr | None = None
    panel: ColourStr | None = None
    boost: ColourStr | None = None
    states: StateColours
    #: extra Textual theme variables, e.g. "footer-key-foreground" or "block-cursor-text-style"
    variables: Annotated[dict[str, str], AfterValidator(_check_variables)] = Field(
        default_factory=dict
    )

    def state_colours(self) -> dict[str, str]:
        return {state: getattr(self.states, state) or FALLBACK_STATE_COLOURS[state]
                for state in STATES}

    def to_theme(self) -> Theme:
        variables = dict(self.variables)
        variables.update({f"state-{k}": v for k, v in self.state_colours().items()})
        return Theme(
            name=self.name,
            primary=self.primary,
            secondary=self.secondary,
            accent=self.accent,
            warning=self.warning,
            error=self.error,
            success=self.success,
            foreground=self.foreground,
            background=self.background,
            surface=self.surface,
            panel=self.panel,
            boost=self.boost,
            dark=self.dark,
            variables=variables,
        )


def load_theme_file(path: Path) -> ThemeFile:
    """Read and validate one theme file; any problem is a one-line `ThemeError`."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ThemeError(path, "file not found") from None
    except OSError as exc:
        raise ThemeError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ThemeError(path, "invalid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(path, f"invalid TOML: {exc}") from None
    try:
        return ThemeFile.model_validate(data)
    except ValidationError as exc:
        raise ThemeError(path, _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        elif kind == "missing" and len(error["loc"]) == 2 and error["loc"][0] == "states":
            problems.append(f"missing state {key!r} (every state needs a colour)")
        elif kind == "missing":
            problems.append(f"missing key {key!r}")
        elif kind == "string_pattern_mismatch" and key == "name":
            problems.append(f"key 'name': {error['input']!r} must be a lowercase id "
                            "(letters, digits, '-')")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"key {key!r}: {message}")
    shown = "; ".join(problems[:3])
    if len(problems) > 3:
        shown += f" (and {len(problems) - 3} more)"
    return shown


# --- the catalog --------------------------------------------------------------------------

#: the default theme, built in so the app looks right even without `theme_files/`
_FALLBACK_DEFAULT = ThemeFile(
    name=DEFAULT_THEME,
    dark=True,
    primary="#5AA9FF",
    secondary="#7C8DB5",
    accent="#F0A35E",
    warning="#F2B84B",
    error="#F25F6B",
    success="#5FD28A",
    foreground="#D7DCE4",
    background="#14171D",
    surface="#1B1F27",
    panel="#262C37",
    states=StateColours(
        creating="#5FD0E0",
        booting="#5AA9FF",
        ready="#5FD28A",
        busy="#F2B84B",
        draining="#E8964A",
        stopping="#A6AEBB",
        stopped="#7D8796",
        failed="#FF6B6B",
        broken="#D98BFF",
        crashed="#FF4F7B",
        unresponsive="#FF6FD2",
        unhealthy="#E3DC4F",
    ),
    variables={"footer-key-foreground": "#5AA9FF", "block-cursor-text-style": "bold"},
)


def user_themes_dir(home: Path | None = None) -> Path:
    """`$BOXUI_HOME/themes` (or the given state dir's `themes/`)."""
    return (home if home is not None else default_home()) / USER_THEMES_SUBDIR


class ThemeCatalog:
    """Built-in themes plus the user's; a user theme with the same name wins."""

    def __init__(self, user_dir: Path | None = None, builtin_dir: Path | None = None) -> None:
        self.builtin_dir = builtin_dir if builtin_dir is not None else BUILTIN_THEMES_DIR
        self.user_dir = user_dir if user_dir is not None else user_themes_dir()
        #: where each theme of the last `load()` came from (None: compiled-in fallback)
        self.sources: dict[str, Path | None] = {}

    def load(self) -> tuple[dict[str, Theme], list[str]]:
        """All valid themes by name, and one message per file that was skipped."""
        files: dict[str, ThemeFile] = {DEFAULT_THEME: _FALLBACK_DEFAULT}
        self.sources = {DEFAULT_THEME: None}
        problems: list[str] = []
        for directory in (self.builtin_dir, self.user_dir):
            seen: dict[str, Path] = {}
            for path in _theme_paths(directory, problems):
                try:
                    theme_file = load_theme_file(path)
                except ThemeError as exc:
                    problems.append(str(exc))
                    continue
                first = seen.get(theme_file.name)
                if first is not None:
                    problems.append(str(ThemeError(
                        path, f"theme {theme_file.name!r} is already defined by {first.name}; "
                        "skipped")))
                    continue
                seen[theme_file.name] = path
                files[theme_file.name] = theme_file
                self.sources[theme_file.name] = path
        return {name: tf.to_theme() for name, tf in files.items()}, problems


def _theme_paths(directory: Path, problems: list[str]) -> list[Path]:
    try:
        return sorted(p for p in directory.glob("*.toml") if p.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(f"{directory}: cannot list themes: {exc.strerror or exc}")
        return []


AppResult = TypeVar("AppResult")


def sync_app_themes(app: App[AppResult], themes: dict[str, Theme],
                    previous: Iterable[str] = ()) -> None:
    """Register `themes` with `app` (again, after a live edit): drop names from `previous`
    that are gone, re-apply the current theme if it changed, fall back to the default if
    the current theme disappeared."""
    for name in previous:
        if name not in themes:
            app.unregister_theme(name)
    for theme in themes.values():
        app.register_theme(theme)
    if app.theme not in app.available_themes:
        app.theme = DEFAULT_THEME if DEFAULT_THEME in app.available_themes else "textual-dark"
    elif app.theme in themes:
        # setting the same name is a no-op for a reactive: force the watcher to re-apply
        app.mutate_reactive(App.theme)


async def watch_user_themes(directory: Path, on_change: Callable[[], None],
                            stop_event: asyncio.Event, *, debounce_ms: int = 300) -> None:
    """Call `on_change()` whenever a `*.toml` in `directory` is added, edited or removed,
    until `stop_event` is set. Creates `directory` if its parent exists; otherwise there
    is nothing to watch and this returns at once."""
    try:
        await asyncio.to_thread(directory.mkdir, mode=0o700, exist_ok=True)
    except OSError:
        return

    def is_theme(_: Change, path: str) -> bool:
        return path.endswith(".toml") and not Path(path).name.startswith(".")

    async for _ in awatch(directory, watch_filter=is_theme, debounce=debounce_ms, step=50,
                          stop_event=stop_event, recursive=False):
        on_change()


# --- remembering the choice ---------------------------------------------------------------


def load_chosen_theme(state_dir_root: Path) -> str | None:
    """The theme saved in `<root>/ui.toml`; None if absent, unreadable or invalid."""
    data = _read_ui(state_dir_root / UI_FILE)
    name = data.get("theme")
    if isinstance(name, str) and _NAME_RE.match(name):
        return name
    return None


def save_chosen_theme(state_dir_root: Path, name: str) -> None:
    """Remember `name` in `<root>/ui.toml` (other keys kept); atomic. Raises
    `StorageError` if it cannot be written."""
    path = state_dir_root / UI_FILE
    data = _read_ui(path)
    data["theme"] = name
    atomic_write_text(path, tomli_w.dumps(data))


def _read_ui(path: Path) -> dict[str, object]:
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    return {}


# --- using a theme ------------------------------------------------------------------------


def cycle(names: list[str], current: str) -> str:
    """The theme after `current` in `names` (wrapping); the first if `current` is unknown."""
    if not names:
        return current
    if current not in names:
        return names[0]
    return names[(names.index(current) + 1) % len(names)]


def state_variable_defaults() -> dict[str, str]:
    """`$state-*` defaults for `App.get_theme_variable_defaults()`, so TCSS that uses
    them still parses when a non-boxui Textual theme is active."""
    return {f"state-{state}": colour for state, colour in FALLBACK_STATE_COLOURS.items()}


def state_style(theme: Theme, state: str) -> str:
    """The colour of `state` in `theme` as "#RRGGBB" (a Rich style), or "" for an unknown
    state. A translucent colour is blended onto the theme's background."""
    value = theme.variables.get(f"state-{state}") or FALLBACK_STATE_COLOURS.get(state)
    if value is None:
        return ""
    try:
        colour = Color.parse(value)
    except ColorParseError:
        colour = Color.parse(FALLBACK_STATE_COLOURS.get(state, "#888888"))
    if colour.a < 1:
        base = theme.background or ("#000000" if theme.dark else "#FFFFFF")
        colour = Color.parse(base).blend(colour.with_alpha(1), colour.a)
    return colour.hex6

