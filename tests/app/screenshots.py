"""Regenerate `screenshots/`: the main screen per theme (the accepted snapshots, copied
as they are) and the demo a few seconds into its story. Run through `bin/screenshots`."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from boxui.tui.demo import build_demo_app, prepare_demo_home
from tests.app.pilot_helpers import THEMES

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).resolve().parent / "__snapshots__" / "test_snapshots"
NAV_SNAPSHOTS = SNAPSHOTS.with_name("test_nav_snapshots")
#: navigation pictures the README shows: accepted snapshot -> screenshots/ name
NAV_SHOTS = {"test_command_line_completing": "command-line",
             "test_sessions_view": "sessions", "test_marks_and_a_filter": "marks-filter"}
#: other accepted snapshots the README shows: (snapshot, screenshots/ name)
SHOWN = (
    ("test_timeline/test_timeline_of_a_service.svg", "timeline.svg"),
    ("test_demo_record_replay/test_replay_marker.svg", "replay.svg"),
)
OUT = ROOT / "screenshots"


def copy_main_screens() -> None:
    for theme in THEMES:
        source = SNAPSHOTS / f"test_main_screen[{theme}].svg"
        shutil.copyfile(source, OUT / f"main-{theme}.svg")
        print(f"screenshots/main-{theme}.svg")
    for shown, name in SHOWN:
        shutil.copyfile(SNAPSHOTS.parent / shown, OUT / name)
        print(f"screenshots/{name}")


def copy_nav_screens() -> None:
    for snapshot, name in NAV_SHOTS.items():
        shutil.copyfile(NAV_SNAPSHOTS / f"{snapshot}.svg", OUT / f"{name}.svg")
        print(f"screenshots/{name}.svg")


async def demo_screenshot(seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="boxui-shots-") as tmp:
        dirs = prepare_demo_home(Path(tmp) / "demo")
        app = build_demo_app(dirs.root, speed=2.0)
        try:
            async with app.run_test(size=(150, 42)) as pilot:
                await pilot.pause(seconds)
                app.clear_notifications()
                await pilot.pause(0.3)
                app.save_screenshot(filename="demo.svg", path=str(OUT))
        finally:
            app.kill_guests()
    print("screenshots/demo.svg")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    copy_main_screens()
    copy_nav_screens()
    asyncio.run(demo_screenshot(float(sys.argv[1]) if len(sys.argv) > 1 else 9.0))


if __name__ == "__main__":
    main()
