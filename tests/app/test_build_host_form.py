"""The new-machine form as issue 15 wants it: OS images (a recipe not built yet is built
first, its steps in the row), the disk size, mounts and ports checked as you type; the
IMAGE column; and a delete that names the disk's size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import Input, Select, Static

from backend.state.engine import Engine
from backend.state.machine_spec import MachineSpec
from backend.state.state_dir import open_state_dir
from backend.supervision.boot_files import ProgressFn
from boxui.tui.forwards import ForwardsError, apply_forwards, mount_error, port_error
from boxui.tui.screens.confirm_delete import ConfirmDeleteScreen
from boxui.tui.screens.new_machine import NewMachineScreen
from boxui.tui.widgets.console_pane import ConsolePane
from tests.app.conftest import MakeApp, embedded
from tests.app.pilot_helpers import SIZE, cell, rows, started, until
from tests.disk_helpers import MIB, fake_image


def error_of(form: NewMachineScreen, field: str) -> str:
    return str(form.query_one(f"#{field}-error", Static).render())


def test_mount_and_port_text_is_the_clis(tmp_path: Path) -> None:
    assert mount_error(f"{tmp_path}:/src:ro {tmp_path}:/other") is None
    assert "no such directory" in (mount_error(f"{tmp_path}/missing:/src") or "")
    assert "absolute" in (mount_error(f"{tmp_path}:src") or "")
    assert "mounted twice" in (mount_error(f"{tmp_path}:/src {tmp_path}:/src") or "")
    assert port_error("8080:80 53/udp 22") is None
    assert "used twice" in (port_error("8080:80 8080:81") or "")
    assert port_error("http") is not None


def test_forwards_reach_the_spec_or_are_refused(tmp_path: Path) -> None:
    spec = MachineSpec(name="vm")
    assert apply_forwards(spec, [], []) == spec
    made = apply_forwards(spec, [f"{tmp_path}:/src:ro"], ["8080:80", "22"])
    assert [str(p) for p in made.ports] == ["8080:80", "22"]
    assert [(m.host, m.guest_dir, m.readonly) for m in made.mounts] == \
        [(str(tmp_path), "/src", True)]
    with pytest.raises(ForwardsError, match="twice"):
        apply_forwards(spec, [], ["22", "22"])


async def test_form_checks_disk_mounts_and_ports_as_you_type(home: Path, make_app: MakeApp,
                                                              tmp_path: Path) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        fake_image(embedded(app).engine.dirs.images, "debian-12", 64 * MIB)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewMachineScreen))
        form = app.screen
        assert isinstance(form, NewMachineScreen)
        await until(pilot, lambda: "debian-12" in form.images)
        select = form.query_one("#image", Select)
        assert form.query_one("#disk", Input).disabled  # the default guest has no disk
        select.value = "debian-12-build"  # a shipped recipe, not built: offered too
        select.value = "debian-12"
        await pilot.pause(0.1)
        assert not form.query_one("#disk", Input).disabled
        form.query_one("#disk", Input).value = "20Q"
        form.query_one("#mounts", Input).value = f"{tmp_path}/nope:/src"
        form.query_one("#ports", Input).value = "8080:80 99999"
        await pilot.pause(0.1)
        assert error_of(form, "disk")
        assert "no such directory" in error_of(form, "mounts")
        assert "1-65535" in error_of(form, "ports")
        form.query_one("#disk", Input).value = "20G"
        form.query_one("#mounts", Input).value = f"{tmp_path}:/src:ro"
        form.query_one("#ports", Input).value = "8080:80"
        await pilot.pause(0.1)
        assert not any(error_of(form, f) for f in ("disk", "mounts", "ports"))


async def test_an_image_not_built_is_built_first_with_progress_in_the_row(
    home: Path, make_app: MakeApp,
) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        backend = embedded(app)
        gate = asyncio.Event()
        built: list[str] = []

        async def build(name: str, progress: ProgressFn | None = None) -> None:
            assert progress is not None
            progress("downloading", "downloading 3/10: curl")
            await asyncio.wait_for(gate.wait(), 10)
            fake_image(backend.engine.dirs.images, name, 64 * MIB)
            built.append(name)

        backend.build_image = build  # type: ignore[method-assign]
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewMachineScreen))
        form = app.screen
        assert isinstance(form, NewMachineScreen)
        await until(pilot, lambda: "debian-12" in form.images)
        assert not form.images["debian-12"].built
        form.query_one("#image", Select).value = "debian-12"
        form.query_one("#name", Input).value = "build1"
        await pilot.pause(0.1)
        form.query_one("#disk", Input).value = "1G"
        await pilot.click("#create")
        await until(pilot, lambda: "downloading" in app._busy.get("build1", ""))
        # shown in the table while its image builds, though it does not exist yet
        await until(pilot, lambda: "downloading" in cell(app, "build1", "state"))
        assert cell(app, "build1", "image") == "debian-12"
        assert "build1" not in {m.name for m in backend.machines()}
        assert app.query_one(ConsolePane).path is None  # nothing to follow yet, no dir made
        assert not backend.engine.dirs.machine_dir("build1").exists()
        gate.set()
        await until(pilot, lambda: "build1" in {m.name for m in backend.machines()}
                    and "build1" in rows(app) and "build1" not in app._busy)
        assert built == ["debian-12"]
        spec = backend.machine("build1").spec
        assert spec is not None and spec.image == "debian-12" and spec.disk == "1G"
        assert cell(app, "build1", "image") == "debian-12"
        console = backend.engine.dirs.console_log("build1")
        await until(pilot, lambda: app.query_one(ConsolePane).path == console)


async def test_delete_names_the_disk_and_its_size(home: Path, make_app: MakeApp) -> None:
    dirs = open_state_dir(home)
    fake_image(dirs.images, "deb", 64 * MIB)
    engine = await Engine.open(home)
    try:
        await engine.create_machine(MachineSpec(name="build1", image="deb", disk="2G"))
    finally:
        await engine.close()
    disk = dirs.machine_dir("build1") / "disk.qcow2"  # a qcow2 header: magic, size at 24
    disk.write_bytes(b"QFI\xfb" + bytes(20) + (2 << 30).to_bytes(8, "big") + bytes(1 << 20))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        assert cell(app, "build1", "image") == "deb"
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDeleteScreen))
        text = " ".join(str(s.render()) for s in app.screen.query(Static))
        assert "disk (1.0M used of 2G)" in text, text
        await pilot.press("y")
        await until(pilot, lambda: rows(app) == [])
        assert not disk.exists()
