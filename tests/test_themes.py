from __future__ import annotations

import asyncio
import colorsys
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.color import Color
from textual.theme import Theme
from textual.widgets import Static

from backend.errors import BoxuiError
from backend.state.lifecycle import InstanceState
from boxui.tui import themes as th
from boxui.tui.themes import (
    BUILTIN_THEMES_DIR,
    DEFAULT_THEME,
    STATES,
    ThemeCatalog,
    ThemeError,
    cycle,
    load_chosen_theme,
    load_theme_file,
    save_chosen_theme,
    state_style,
    state_variable_defaults,
    sync_app_themes,
    watch_user_themes,
)

BUILTINS = ("boxui-dark", "boxui-light", "boxui-nord", "boxui-high-contrast")

GOOD = """\
name = "{name}"
dark = true
primary = "#112233"
background = "#000000"

[states]
creating = "#00c0c0"
booting = "#0080ff"
ready = "{ready}"
busy = "#ffbf00"
draining = "#ff9900"
stopping = "#aaaaaa"
stopped = "#888888"
failed = "#ff3333"
broken = "#ff00ff"
crashed = "#ff0055"
"""


def good(name: str = "mine", ready: str = "#00ff00") -> str:
    return GOOD.format(name=name, ready=ready)


def write(directory: Path, filename: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text)
    return path


def luminance(text: str) -> float:
    colour = Color.parse(text)

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(colour.r) + 0.7152 * channel(colour.g) + 0.0722 * channel(colour.b)


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def family(colour: str) -> str:
    parsed = Color.parse(colour)
    hue, _, saturation = colorsys.rgb_to_hls(parsed.r / 255, parsed.g / 255, parsed.b / 255)
    degrees = hue * 360
    if saturation < 0.2:
        return "grey"
    if degrees < 20 or degrees >= 340:
        return "red"
    if degrees < 65:
        return "amber"
    if degrees < 170:
        return "green"
    if degrees < 255:
        return "blue"
    return "magenta"


EXPECTED_FAMILY = {
    "creating": "blue", "booting": "blue", "ready": "green", "busy": "amber",
    "draining": "amber", "stopping": "grey", "stopped": "grey", "failed": "red",
    "crashed": "red", "broken": "magenta", "unresponsive": "magenta", "unhealthy": "amber",
}


# --- built-in themes ----------------------------------------------------------------------


def test_states_match_the_lifecycle() -> None:
    assert set(STATES) == {s.value for s in InstanceState}
    assert set(STATES) == set(EXPECTED_FAMILY)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_theme_loads_and_converts(name: str) -> None:
    theme_file = load_theme_file(BUILTIN_THEMES_DIR / f"{name}.toml")
    assert theme_file.name == name
    theme = theme_file.to_theme()
    assert isinstance(theme, Theme)
    assert theme.name == name
    for state in STATES:
        assert theme.variables[f"state-{state}"] == getattr(theme_file.states, state)
        Color.parse(theme.variables[f"state-{state}"])
    # Textual builds its colour system from it, with the file's own base colours
    generated = theme.to_color_system().generate()
    for key in ("primary", "background", "surface", "panel"):
        assert generated[key] == getattr(theme_file, key), key


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_states_are_readable_and_distinguishable(name: str) -> None:
    theme_file = load_theme_file(BUILTIN_THEMES_DIR / f"{name}.toml")
    colours = theme_file.state_colours()
    assert len(set(colours.values())) == len(STATES), "each state has its own colour"
    for state, colour in colours.items():
        assert family(colour) == EXPECTED_FAMILY[state], (state, colour)
        for backdrop in (theme_file.background, theme_file.surface, theme_file.panel):
            assert backdrop is not None
            assert contrast(colour, backdrop) >= 3.0, (state, colour, backdrop)


def test_high_contrast_theme_meets_seven_to_one() -> None:
    """WCAG AAA for every state colour and the text, on every backdrop it is drawn on."""
    theme_file = load_theme_file(BUILTIN_THEMES_DIR / "boxui-high-contrast.toml")
    for colour in [*theme_file.state_colours().values(), theme_file.foreground,
                   theme_file.primary]:
        assert colour is not None
        for backdrop in (theme_file.background, theme_file.surface, theme_file.panel):
            assert backdrop is not None
            assert contrast(colour, backdrop) >= 7.0, (colour, backdrop)


def test_builtin_names_are_distinct_and_catalog_has_them() -> None:
    names = [load_theme_file(BUILTIN_THEMES_DIR / f"{n}.toml").name for n in BUILTINS]
    assert len(set(names)) == len(BUILTINS)
    themes, problems = ThemeCatalog(user_dir=Path("/nonexistent/boxui-themes")).load()
    assert problems == []
    assert set(BUILTINS) <= set(themes)
    assert {t.dark for n, t in themes.items() if n in BUILTINS} == {True, False}


def test_compiled_in_default_matches_the_file() -> None:
    assert load_theme_file(BUILTIN_THEMES_DIR / f"{DEFAULT_THEME}.toml") == th._FALLBACK_DEFAULT


def test_missing_builtin_folder_still_gives_the_default(tmp_path: Path) -> None:
    catalog = ThemeCatalog(user_dir=tmp_path / "user", builtin_dir=tmp_path / "nope")
    themes, problems = catalog.load()
    assert problems == []
    assert list(themes) == [DEFAULT_THEME]
    assert catalog.sources[DEFAULT_THEME] is None


# --- bad files ----------------------------------------------------------------------------


def assert_one_line_error(path: Path, *fragments: str) -> ThemeError:
    with pytest.raises(ThemeError) as info:
        load_theme_file(path)
    message = str(info.value)
    assert isinstance(info.value, BoxuiError)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", 'name = "x"\nprimary = \n')
    assert_one_line_error(path, "invalid TOML", "line 2")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", good() + '\n[extra]\nx = 1\n')
    assert_one_line_error(path, "unknown key 'extra'")
    path = write(tmp_path, "t2.toml", 'primry = "#fff"\n' + good())
    assert_one_line_error(path, "unknown key 'primry'")


def test_unknown_state_key(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", good() + 'sleeping = "#123456"\n')
    assert_one_line_error(path, "unknown key 'states.sleeping'")


def test_bad_colour_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", good(ready="gren"))
    assert_one_line_error(path, "states.ready", "invalid colour 'gren'")
    path = write(tmp_path, "t2.toml", good().replace('"#112233"', '"#12345"'))
    assert_one_line_error(path, "'primary'", "invalid colour '#12345'")


def test_missing_state(tmp_path: Path) -> None:
    text = "\n".join(line for line in good().splitlines() if not line.startswith("broken"))
    path = write(tmp_path, "t.toml", text)
    assert_one_line_error(path, "missing state 'states.broken'")
    path = write(tmp_path, "t2.toml", good().split("[states]")[0])
    assert_one_line_error(path, "missing key 'states'")


def test_bad_name_and_bad_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "t.toml", good(name="My Theme"))
    assert_one_line_error(path, "'name'", "lowercase")
    path = write(tmp_path, "t2.toml", good() + '\n[variables]\nfooter-key-foreground = "blurple"\n')
    assert_one_line_error(path, "variables", "footer-key-foreground")
    path = write(tmp_path, "t3.toml", good() + '\n[variables]\nstate-ready = "#00ff00"\n')
    assert_one_line_error(path, "state-ready", "[states]")


def test_good_variables_are_kept(tmp_path: Path) -> None:
    text = good() + '\n[variables]\ninput-selection-background = "#81a1c1 35%"\n' \
        'button-focus-text-style = "reverse"\n'
    theme = load_theme_file(write(tmp_path, "t.toml", text)).to_theme()
    assert theme.variables["input-selection-background"] == "#81a1c1 35%"
    assert theme.variables["button-focus-text-style"] == "reverse"


def test_colours_are_normalised(tmp_path: Path) -> None:
    theme_file = load_theme_file(write(tmp_path, "t.toml", good(ready="rgb(0, 255, 0)")))
    assert theme_file.states.ready == "#00FF00"


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "absent.toml", "not found")


# --- catalog ------------------------------------------------------------------------------


def test_user_theme_overrides_builtin(tmp_path: Path) -> None:
    user = tmp_path / "user"
    write(user, "override.toml", good(name="boxui-dark", ready="#010203"))
    write(user, "extra.toml", good(name="extra"))
    catalog = ThemeCatalog(user_dir=user)
    themes, problems = catalog.load()
    assert problems == []
    assert themes["boxui-dark"].variables["state-ready"] == "#010203"
    assert catalog.sources["boxui-dark"] == user / "override.toml"
    assert "extra" in themes and "boxui-light" in themes


def test_invalid_user_theme_is_skipped_and_reported(tmp_path: Path) -> None:
    user = tmp_path / "user"
    write(user, "a-bad.toml", good(name="bad", ready="nope"))
    write(user, "b-broken.toml", "this is = = not toml")
    write(user, "c-good.toml", good(name="good"))
    write(user, "d-dupe.toml", good(name="good", ready="#000001"))
    (user / "notes.txt").write_text("ignored")
    themes, problems = ThemeCatalog(user_dir=user).load()
    assert "good" in themes and "bad" not in themes
    assert themes["good"].variables["state-ready"] == "#00FF00"
    assert set(BUILTINS) <= set(themes)
    assert len(problems) == 3
    assert all("\n" not in p for p in problems)
    assert "a-bad.toml" in problems[0] and "states.ready" in problems[0]
    assert "b-broken.toml" in problems[1] and "invalid TOML" in problems[1]
    assert "d-dupe.toml" in problems[2] and "already defined" in problems[2]


def test_default_user_dir_follows_boxui_home(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXUI_HOME", str(tmp_path / "h"))
    write(tmp_path / "h" / "themes", "x.toml", good(name="from-home"))
    themes, _ = ThemeCatalog().load()
    assert "from-home" in themes


# --- remembering the choice ---------------------------------------------------------------


def test_chosen_theme_round_trips(tmp_path: Path) -> None:
    assert load_chosen_theme(tmp_path) is None
    (tmp_path / "ui.toml").write_text('other = 1\ntheme = "old"\n')
    save_chosen_theme(tmp_path, "boxui-light")
    assert load_chosen_theme(tmp_path) == "boxui-light"
    assert "other = 1" in (tmp_path / "ui.toml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["ui.toml"]  # no temp files left


@pytest.mark.parametrize("content", [b"theme = = 3", b"theme = 3\n", b"\xff\xfe", b'theme="A B"'])
def test_corrupt_ui_toml_is_ignored(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "ui.toml").write_bytes(content)
    assert load_chosen_theme(tmp_path) is None
    save_chosen_theme(tmp_path, "boxui-nord")  # a corrupt file is simply replaced
    assert load_chosen_theme(tmp_path) == "boxui-nord"


def test_cycle() -> None:
    names = ["a", "b", "c"]
    assert cycle(names, "a") == "b"
    assert cycle(names, "c") == "a"
    assert cycle(names, "zzz") == "a"
    assert cycle([], "x") == "x"


def test_state_style(tmp_path: Path) -> None:
    themes, _ = ThemeCatalog(user_dir=tmp_path).load()
    dark = themes["boxui-dark"]
    assert state_style(dark, "ready") == dark.variables["state-ready"]
    assert state_style(dark, "nonsense") == ""
    plain = Theme(name="plain", primary="#ff0000")
    assert state_style(plain, "failed") == Color.parse(th.FALLBACK_STATE_COLOURS["failed"]).hex6
    translucent = Theme(name="t", primary="#ff0000", background="#000000",
                        variables={"state-ready": "#00FF0080"})
    assert state_style(translucent, "ready") == Color(0, 128, 0).hex6


# --- in a Textual app ---------------------------------------------------------------------


class ThemedApp(App[None]):
    CSS = "#probe { color: $state-ready; background: $background; }"

    def __init__(self, themes: dict[str, Theme]) -> None:
        super().__init__()
        for theme in themes.values():
            self.register_theme(theme)

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return state_variable_defaults()

    def compose(self) -> ComposeResult:
        yield Static("[$state-failed]x[/]", id="probe")


async def test_registered_themes_drive_tcss(tmp_path: Path) -> None:
    themes, problems = ThemeCatalog(user_dir=tmp_path).load()
    assert problems == []
    app = ThemedApp(themes)
    async with app.run_test() as pilot:
        probe = app.query_one("#probe", Static)
        for name in BUILTINS:
            app.theme = name
            await pilot.pause()
            assert app.current_theme.name == name
            ready = Color.parse(themes[name].variables["state-ready"])
            assert probe.styles.color == ready
            assert probe.styles.background == Color.parse(str(themes[name].background))
            # Textual content markup resolves the variable too: "[$state-failed]x[/]"
            segment = next(iter(probe.render_line(0)))
            assert segment.style is not None and segment.style.color is not None
            assert segment.style.color.triplet is not None
            assert segment.style.color.triplet.hex.upper() == themes[name].variables[
                "state-failed"]
        # a non-boxui theme still works: $state-* falls back to the defaults
        app.theme = "textual-dark"
        await pilot.pause()
        assert probe.styles.color == Color.parse(th.FALLBACK_STATE_COLOURS["ready"])


async def test_live_edit_is_reapplied(tmp_path: Path) -> None:
    user = tmp_path / "user"
    write(user, "mine.toml", good(name="mine", ready="#102030"))
    catalog = ThemeCatalog(user_dir=user)
    themes, _ = catalog.load()
    app = ThemedApp(themes)
    async with app.run_test() as pilot:
        app.theme = "mine"
        await pilot.pause()
        probe = app.query_one("#probe", Static)
        assert probe.styles.color == Color.parse("#102030")
        # the user edits the current theme: re-registering re-applies it
        write(user, "mine.toml", good(name="mine", ready="#405060"))
        new_themes, _ = catalog.load()
        sync_app_themes(app, new_themes, previous=themes)
        await pilot.pause()
        assert probe.styles.color == Color.parse("#405060")
        # the user deletes it: it is unregistered and the app falls back to the default
        (user / "mine.toml").unlink()
        final, _ = catalog.load()
        sync_app_themes(app, final, previous=new_themes)
        await pilot.pause()
        assert "mine" not in app.available_themes
        assert app.theme == DEFAULT_THEME


async def test_watch_user_themes_reports_changes(tmp_path: Path) -> None:
    user = tmp_path / "themes"
    changed = asyncio.Event()
    stop = asyncio.Event()
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        changed.set()

    task = asyncio.create_task(watch_user_themes(user, on_change, stop, debounce_ms=50))
    try:
        for _ in range(100):  # wait for the directory (and so the watcher) to exist
            if user.is_dir():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        (user / "ignored.txt").write_text("x")
        write(user, "mine.toml", good())
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert calls
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_watch_without_parent_returns(tmp_path: Path) -> None:
    """Nothing to watch: it returns at once (`stop` is never set), calls nothing and
    creates no directory on the way."""
    stop = asyncio.Event()
    calls: list[int] = []
    await asyncio.wait_for(watch_user_themes(
        tmp_path / "no" / "themes", lambda: calls.append(1), stop), timeout=2)
    assert calls == [] and list(tmp_path.iterdir()) == []

