"""`boxui daemon install|uninstall`: the systemd unit, what it runs, and how it is written."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import boxui.daemon.systemd_unit as su
from boxui.cli.daemon_unit import install_cmd
from boxui.cli.main import cli
from tests.conftest import BOXUI, cli_env


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CONFIG_HOME, where a user unit goes; a system unit goes under it too, so no
    test writes /etc."""
    path = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(path))
    monkeypatch.setattr(su, "SYSTEM_UNIT_DIR", tmp_path / "etc-systemd")
    return path


def run(home: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(home) | {"XDG_CONFIG_HOME": str(config)}
    out = subprocess.run([*BOXUI, "daemon", *args], capture_output=True, text=True,
                         env=env, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_the_unit_runs_this_boxui_in_the_foreground_and_leaves_vms_alone() -> None:
    text = su.render_unit(["/opt/boxui/bin/boxui"], Path("/srv/boxui"), system=True,
                          idle_flag=False)
    lines = text.splitlines()
    assert "ExecStart=/opt/boxui/bin/boxui daemon" in lines
    assert 'Environment="BOXUI_HOME=/srv/boxui"' in lines
    for line in ("KillMode=process", "Restart=on-failure", "Type=exec",
                 "WantedBy=multi-user.target", "After=network.target"):
        assert line in lines
    user = su.render_unit(["/b"], Path("/h"), system=False, idle_flag=True).splitlines()
    assert "ExecStart=/b daemon --idle-timeout 0" in user
    assert "WantedBy=default.target" in user and "After=network.target" not in user


def test_odd_paths_are_quoted_for_systemd() -> None:
    text = su.render_unit(['/a b/bo%x$"ui', "-m", "$x"], Path("/h 1/100%"), system=False,
                          idle_flag=False)
    assert 'ExecStart="/a b/bo%%x$\\"ui" -m $$x daemon' in text
    assert 'Environment="BOXUI_HOME=/h 1/100%%"' in text
    with pytest.raises(su.UnitError, match="line break"):
        su.render_unit(["/b"], Path("/h\nExecStartPre=/bin/evil"), system=False,
                       idle_flag=False)


def test_the_command_is_the_boxui_that_was_run(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "bin" / "boxui"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bin/boxui"])
    assert su.boxui_command() == [str(script)]
    monkeypatch.setenv("PATH", str(script.parent))
    monkeypatch.setattr(sys, "argv", ["boxui"])
    assert su.boxui_command() == [str(script)]
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "boxui" / "__main__.py")])
    assert su.boxui_command() == [os.path.abspath(sys.executable), "-P", "-m", "boxui"]


def test_idle_timeout_zero_only_if_the_daemon_takes_it(home: Path, config: Path) -> None:
    @click.group()
    @click.option("--idle-timeout", type=float)
    def daemon(idle_timeout: float | None) -> None:
        pass

    daemon.add_command(install_cmd)
    with_flag = CliRunner().invoke(daemon, ["install", "--print", "--user"])
    assert "daemon --idle-timeout 0\n" in with_flag.output

    @click.group()
    def bare() -> None:
        pass

    bare.add_command(install_cmd)
    without = CliRunner().invoke(bare, ["install", "--print", "--user"])
    assert without.exit_code == 0 and "ExecStart=" in without.output
    assert "--idle-timeout" not in without.output
    # boxui's own daemon idles out when started in the background: the unit says never
    real = CliRunner().invoke(cli, ["daemon", "install", "--print", "--user"])
    assert real.exit_code == 0 and "daemon --idle-timeout 0\n" in real.output


def test_install_print_force_and_uninstall(home: Path, config: Path) -> None:
    unit = config / "systemd" / "user" / "boxui.service"
    shown = run(home, config, "install", "--user", "--print")
    assert shown.returncode == 0 and f'BOXUI_HOME={home}"' in shown.stdout
    assert not unit.exists() and not home.exists()  # --print writes nothing

    first = run(home, config, "install", "--user")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:2] == [
        f"installed {unit}",
        "enable and start it: systemctl --user daemon-reload && "
        "systemctl --user enable --now boxui"]
    assert "loginctl enable-linger" in first.stdout
    assert unit.read_text() == shown.stdout
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    again = run(home, config, "install", "--user")
    assert again.returncode == 0 and f"{unit} is installed already" in again.stdout

    unit.write_text(shown.stdout + "Nice=5\n")  # a hand edit is not lost without --force
    refused = run(home, config, "install", "--user")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"boxui: {unit} exists and differs from the unit boxui "
                              "would write (--print shows it); --force replaces it\n")
    assert unit.read_text().endswith("Nice=5\n")
    forced = run(home, config, "install", "--user", "--force")
    assert forced.returncode == 0 and f"replaced {unit}" in forced.stdout
    assert unit.read_text() == shown.stdout

    link = unit.parent / "default.target.wants" / "boxui.service"
    link.parent.mkdir()
    link.symlink_to(unit)
    enabled = run(home, config, "uninstall", "--user")
    assert enabled.returncode == 1 and unit.exists()
    assert enabled.stderr == ("boxui: boxui.service is enabled; run `systemctl --user "
                              "disable --now boxui` first\n")
    link.unlink()
    removed = run(home, config, "uninstall", "--user")
    assert removed.returncode == 0 and not unit.exists()
    assert removed.stdout == f"removed {unit}; now run: systemctl --user daemon-reload\n"
    assert run(home, config, "uninstall", "--user").stdout == f"no unit to remove at {unit}\n"


def test_root_gets_a_system_unit(home: Path, config: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    result = CliRunner().invoke(cli, ["daemon", "install"])
    assert result.exit_code == 0, result.output
    unit = su.SYSTEM_UNIT_DIR / "boxui.service"
    assert result.output.startswith(f"installed {unit}\nenable and start it: "
                                    "systemctl daemon-reload && systemctl enable --now boxui")
    assert "loginctl" not in result.output
    assert "WantedBy=multi-user.target" in unit.read_text()
    assert not (config / "systemd").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package systemd)")
@pytest.mark.parametrize("system", [True, False], ids=["system", "user"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, system: bool) -> None:
    odd = tmp_path / "a dir" / "bo%x$ui"  # quoting is part of what is verified
    odd.parent.mkdir()
    shutil.copy(sys.executable, odd)
    unit = tmp_path / "boxui.service"
    for command in ([str(odd)], su.boxui_command()):
        unit.write_text(su.render_unit(command, tmp_path / "h o%me", system=system,
                                       idle_flag=True))
        runtime = tmp_path / "runtime"  # a user manager needs one, even offline
        runtime.mkdir(mode=0o700, exist_ok=True)
        env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
        scope = [] if system else ["--user"]
        out = subprocess.run(["systemd-analyze", *scope, "verify", str(unit)],
                             capture_output=True, text=True, env=env, timeout=60)
        # verify exits 0 on unknown keys and bad values too: only its silence tells.
        # Newer systemd warns about KillMode=process by design; the unit says why.
        complaints = [line for line in (out.stdout + out.stderr).splitlines()
                      if "KillMode=process" not in line]
        assert out.returncode == 0 and complaints == [], out.stdout + out.stderr
