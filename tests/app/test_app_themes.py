"""Themes inside the app: the catalog is registered, the choice is remembered, a broken
user theme falls back with a notification, and a theme dropped in live appears."""

from __future__ import annotations

from pathlib import Path

from backend.state.state_dir import open_state_dir
from boxui.tui.themes import BUILTIN_THEMES_DIR, DEFAULT_THEME, load_chosen_theme, state_style
from boxui.tui.widgets.machine_table import MachineTable
from tests.app.conftest import MakeApp, seed
from tests.app.pilot_helpers import SIZE, cell, started, until


async def test_t_cycles_boxui_themes_and_remembers_the_choice(home: Path,
                                                              make_app: MakeApp) -> None:
    await seed(home, "vm")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert app.theme == DEFAULT_THEME
        for name in ("boxui-dark", "boxui-light", "boxui-nord"):
            assert name in app.available_themes
        await pilot.press("t")
        await until(pilot, lambda: load_chosen_theme(home) == app.theme)
        chosen = app.theme
        assert chosen != DEFAULT_THEME
        app.query_one(MachineTable).blur()  # the cursor row is drawn in cursor colours
        await pilot.pause(0.1)
        line = app.query_one(MachineTable).render_line(1)
        state_segment = next(seg for seg in line if seg.text.strip() == "stopped")
        assert state_segment.style is not None and state_segment.style.color is not None
        assert state_segment.style.color.triplet is not None
        assert state_segment.style.color.triplet.hex == state_style(app.current_theme,
                                                                    "stopped").lower()
    again = make_app()
    async with again.run_test(size=SIZE) as pilot:
        await started(pilot, again)
        assert again.theme == chosen
        assert cell(again, "vm", "state") == "stopped"


async def test_broken_user_theme_falls_back_with_a_notification(home: Path,
                                                                make_app: MakeApp) -> None:
    open_state_dir(home)
    themes = home / "themes"
    themes.mkdir(mode=0o700)
    (themes / "mine.toml").write_text('name = "mine"\nprimary = "not a colour"\n')
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert "mine" not in app.available_themes
        assert app.theme == DEFAULT_THEME
        await until(pilot, lambda: any("mine.toml" in n.message for n in app._notifications))


async def test_theme_dropped_in_live_is_registered(home: Path, make_app: MakeApp) -> None:
    open_state_dir(home)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        await pilot.pause(0.5)  # let the watcher start
        text = (BUILTIN_THEMES_DIR / "boxui-nord.toml").read_text()
        target = home / "themes"
        target.mkdir(mode=0o700, exist_ok=True)
        (target / "custom.toml").write_text(
            text.replace('name = "boxui-nord"', 'name = "custom-nord"'))
        await until(pilot, lambda: "custom-nord" in app.available_themes, timeout=10)
