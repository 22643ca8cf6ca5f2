"""`boxui demo`'s modes beyond the built-in story: a script, on stand-ins or real
machines, and recording any of them (see `demo`, `demo_script`, `recording`)."""

from __future__ import annotations

import sys
from pathlib import Path

from backend.drivers.standin import GuestPlan
from backend.errors import BoxuiError
from boxui.tui.backend import BackendOptions
from boxui.tui.demo import (
    DemoApp,
    DemoBootFiles,
    build_demo_app,
    default_demo_home,
    demo_accel,
    demo_driver,
    prepare_demo_home,
)
from boxui.tui.demo_script import Create, DemoScript, ScriptDirector, load_script
from boxui.tui.embedded import EmbeddedBackend

#: a stand-in whose step says only why it fails boots this long first
FAILING_BOOT_SECONDS = 2.0


def build_script_app(home: Path, script: DemoScript, *, speed: float = 1.0,
                     real: bool = False, record: Path | None = None,
                     source: str = "") -> DemoApp:
    """The demo app acting out `script` in `home` (already prepared): on stand-ins, or
    with `real` on QEMU guests (the normal driver, boot files and accelerator)."""
    what = script.title or source or "a script"
    if real:
        driver = None
        options = BackendOptions(home=home)
        label = f"DEMO SCRIPT {what}: real machines"
    else:
        driver = demo_driver({}, speed=speed)
        options = BackendOptions(home=home, driver_factory=lambda: driver,
                                 boot_files_factory=DemoBootFiles, accel_for=demo_accel)
        label = f"DEMO SCRIPT {what}: stand-in processes, not VMs"
    backend = EmbeddedBackend(options)
    shown: list[DemoApp] = []

    def plan(step: Create, name: str) -> None:
        if driver is not None and (step.boot_seconds or step.fail_boot):
            driver.plans[name] = GuestPlan(step.boot_seconds or FAILING_BOOT_SECONDS,
                                           step.fail_boot)

    def say(text: str, seconds: float) -> None:
        if shown:
            shown[0].notify(text, title=what, timeout=seconds)

    director = ScriptDirector(backend, script, speed=speed, plan=plan, say=say)
    notice = (f"Acting out {what} ({len(script.steps)} steps"
              f"{', looping' if script.loop else ''}). Keys work as usual; q quits"
              f"{' and stops its machines' if real else ' and ends the demo guests'}.")
    app = DemoApp(backend, driver, speed=speed, director=director, record=record,
                  label=label, notice=notice)
    shown.append(app)
    return app


def run_demo_mode(home: Path | None, *, script: Path | None = None, real: bool = False,
                  record: Path | None = None, speed: float = 1.0) -> None:
    """`boxui demo [--script FILE [--real]] [--record FILE] [--speed N]`."""
    if speed <= 0:
        raise BoxuiError(f"--speed must be more than 0, not {speed:g}")
    parsed = load_script(script) if script is not None else None  # checked first of all
    if not sys.stdout.isatty():
        raise BoxuiError("the demo needs a terminal")
    if record is not None and not record.parent.is_dir():
        raise BoxuiError(f"cannot record to {record}: {record.parent} is not a directory")
    dirs = prepare_demo_home(home or default_demo_home())
    if parsed is None:
        app = build_demo_app(dirs.root, speed=speed, record=record)
    else:
        app = build_script_app(dirs.root, parsed, speed=speed, real=real, record=record,
                               source=script.name if script else "")
    try:
        app.run()
    finally:
        app.kill_guests()
