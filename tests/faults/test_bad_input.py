"""Item 10: every CLI command given bad names, bad numbers and missing files exits with
one line (exit code 2 for a usage error), never a traceback, and creates nothing outside
the state dir (nor any machine inside it). The real entry point (`boxui.cli.main.main`) runs
in this process, so that a NUL byte, which no exec can pass, is tested too; a few cases
also run as real processes. API endpoints join this table when the API lands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from boxui.cli.main import cli, main
from tests.conftest import BOXUI, cli_env
from tests.faults.conftest import FaultRecorder

BAD_NAMES = ["../x", "a/b", "-rf", "", "x" * 300, "a\0b", "héllo", "UPPER", "a b", "."]

#: every command that takes a machine name: (options before it, arguments after it)
NAMED: dict[str, tuple[list[str], list[str]]] = {
    "info": ([], []), "events": ([], []), "create": (["--no-start"], []), "start": ([], []),
    "stop": ([], []), "restart": ([], []), "rm": (["--force"], []), "logs": ([], []),
    "ssh": ([], []), "ssh-config": ([], []), "exec": ([], ["true"]),
    "service create": (["--no-wait"], []), "service scale": (["--no-wait"], ["1"]),
    "service rm": ([], []), "template build": ([], []), "template revisions": ([], []),
    "template rm": ([], []), "disk show": ([], []), "disk resize": ([], ["1G"]),
    "image build": ([], []), "image rm": ([], []), "provision": ([], []),
    "port add": ([], ["80"]), "port rm": ([], ["80"]), "port ls": ([], []),
    "commands": ([], []),
    "run": (["--name"], ["--", "true"]),
    "pool set": ([], ["1"]),
    "host add": ([], ["ssh://h"]), "host rm": ([], []), "host use": ([], []),
}
#: group commands that take no name (covered by BAD_OPTIONS)
UNNAMED = {"ls", "daemon status", "daemon stop", "daemon install", "daemon uninstall", "demo",
           "doctor", "gc", "service ls", "template ls", "image ls", "cp", "cells",
           "pool ls", "host ls", "host import", "host endpoint", "host stage"}
#: bad numbers, bad choices, missing files and stray arguments for every command
BAD_OPTIONS = [
    *(["create", "ok", "--vcpus", n] for n in ("0", "-1", str(10**30), "1.5", "x")),
    *(["create", "ok", "--memory", n] for n in ("0", "-1", str(10**30), "63", "")),
    ["create", "ok", "--kernel", "/nonexistent/vmlinuz", "--initrd", "/nonexistent/i"],
    ["create", "ok", "--disk-image", "/nonexistent/disk.img"],
    *(["create", "ok", "--image", "deb", "--disk", d] for d in ("/nonexistent/disk.img",
                                                                 "20X", "0", "-1G", "")),
    ["create", "ok", "--disk", "20G"], ["create", "ok", "--image", "../x"],
    *(["disk", "resize", "ok", d] for d in ("20X", "0", "", "99999T")),
    ["disk", "resize", "ok"], ["disk", "frobnicate"],
    ["create", "ok", "--accel", "fast"],
    ["create", "ok", "--provision", "/nonexistent/setup.sh"], ["create", "ok", "--provision"],
    ["create", "ok", "--provision", "/"],
    ["create", "ok", "--restart", "sometimes"],
    ["events", "-n", "-1"], ["events", "-n", "many"],
    ["ls", "extra"], ["ls", "--bogus"], ["daemon", "extra"], ["daemon", "--bogus"],
    ["daemon", "--idle-timeout", "-1"], ["daemon", "--idle-timeout", "soon"],
    ["daemon", "status", "extra"], ["daemon", "stop", "--bogus"],
    ["daemon", "install", "extra"], ["daemon", "install", "--bogus"],
    ["daemon", "uninstall", "extra"], ["daemon", "uninstall", "--bogus"],
    ["doctor", "extra"], ["doctor", "--bogus"], ["gc", "extra"], ["gc", "--bogus"],
    ["gc", "--dry-run=maybe"],
    ["demo", "--home", "FILE"], ["info"], ["start"], ["exec", "ok"], ["frobnicate"],
    ["exec", "--timeout", "0", "ok", "true"], ["exec", "--timeout", "soon", "ok", "true"],
    ["exec", "--attempts", "2", "ok", "true"],
    ["exec", "--idempotent", "--attempts", "0", "ok", "true"],
    ["commands", "-n", "0"], ["commands", "ok", "extra"], ["commands", "--bogus"],
    *(["service", "create", "ok", "--no-wait", opt, n] for opt in ("--replicas", "--max")
      for n in ("-1", str(10**30), "x")),
    *(["service", "create", "ok", "--no-wait", "--vcpus", n] for n in ("0", "-1", "x")),
    *(["service", "create", "ok", "--no-wait", "--memory", n] for n in ("0", "63", "")),
    *(["service", "create", "ok", "--no-wait", "--port", p] for p in ("0", "99999", "a:b",
                                                                       "1:2:3", "-5")),
    *(["service", "create", "ok", "--no-wait", "--env", e] for e in ("NOEQUALS", "1X=y",
                                                                     "=v", "A B=c")),
    ["service", "create", "ok", "--no-wait", "--drain-timeout", "-1"],
    *(["service", "create", "ok", "--no-wait", "--template", t] for t in ("../x", "a:B", ":")),
    *(["service", "scale", "ok", n] for n in ("-1", str(10**30), "x", "")),
    ["service", "scale", "ok"], ["service", "ls", "extra"], ["service", "frobnicate"],
    ["template", "build", "/nonexistent/template.toml"], ["template", "build", "FILE/"],
    ["template", "ls", "extra"], ["template", "frobnicate"],
    ["image", "ls", "extra"], ["image", "build"], ["image", "frobnicate"],
    # cp: NAME:PATH on exactly one side, NAME valid (a name with a bad character is a
    # local path only when a '/' comes before the colon, as scp reads it)
    ["cp"], ["cp", "a"], ["cp", "a", "b", "c"], ["cp", "a", "FILE"], ["cp", "x:a", "y:b"],
    ["cp", "--bogus", "a", "ok:b"], ["cp", "", "ok:b"], ["cp", "a", "ok:b\0"],
    *(["cp", "a", f"{n}:b"] for n in ("UPPER", "héllo", "a b", "a\0b", "x" * 300, ".", "")),
    ["cp", "-r=yes", "a", "ok:b"],
    *(["port", cmd, "ok", p] for cmd in ("add", "rm")
      for p in ("0", "99999", "a:b", "1:2:3", "-5", "80/sctp", "80:80", "")),
    ["port", "add", "ok"], ["port", "ls", "ok", "extra"], ["port", "frobnicate"],
    *(["create", "ok", "--port", p] for p in ("0", "80/icmp", "1023:80", "")),
    ["create", "ok", "--port", "80", "--port", "8080:80"],
    ["ssh-config"], ["ssh-config", "ok", "--install"], ["ssh-config", "--install=maybe"],
    # run: a command is needed; files, env, timeout and the machine's source are checked
    ["run"], ["run", "--keep"], ["cells", "extra"], ["cells", "--bogus"],
    ["pool", "ls", "extra"], ["pool", "set", "web:worker"], ["pool", "set", "web", "x"],
    ["pool", "set", "web:worker", "-1"], ["pool", "set", "web:Worker", "1"],
    *(["run", "--timeout", t, "--", "true"] for t in ("0", "-1", "soon")),
    *(["run", "--input", i, "--", "true"] for i in ("/nonexistent:/x", "FILE", "FILE:rel",
                                                   ":/x")),
    *(["run", "--export", e, "--", "true"] for e in ("rel", "/x:/nonexistent", "/x:FILE")),
    *(["run", "--env", e, "--", "true"] for e in ("NOEQUALS", "1X=y", "=v")),
    *(["run", "--template", t, "--", "true"] for t in ("../x", "a:B", ":")),
    ["run", "--image", "../x", "--", "true"], ["run", "--template", "t", "--image", "i", "true"],
    *(["host", "add", "ok", a] for a in ("ftp://h", "ssh://-oX=y", "ssh://h:0", "h", "")),
    ["host", "add", "ok"], ["host", "add", "ok", "ssh://h", "--libvirt", "qemu:///system"],
    ["host", "add", "local", "ssh://h"], ["host", "add", "ok", "--libvirt", "q:///s", "--plain"],
    ["host", "ls", "extra"], ["host", "import", "--config", "/nonexistent/config"],
    ["host", "endpoint", "extra"], ["host", "frobnicate"],
]
CASES = [
    *([*cmd.split(), *opts, name, *args] for cmd, (opts, args) in NAMED.items()
      for name in BAD_NAMES),
    *([*cmd.split(), *opts, "--", "-rf", *args] for cmd, (opts, args) in NAMED.items()),
    *BAD_OPTIONS,
]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd, a HOME and a state dir of its own, so anything created is seen."""
    for sub in ("cwd", "user", "state"):
        (tmp_path / sub).mkdir(mode=0o700)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("BOXUI_HOME", str(tmp_path / "state" / "home"))
    monkeypatch.delenv("BOXUI_DEBUG", raising=False)
    (tmp_path / "a-file").write_text("not a directory\n")
    return tmp_path


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["boxui", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


@pytest.mark.fault("10. bad input to every CLI command")
def test_every_command_rejects_bad_input(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str],
                                         fault: FaultRecorder) -> None:
    before = snapshot(sandbox)
    problems = []
    for case in CASES:
        argv = [str(sandbox / "a-file") if a == "FILE" else a for a in case]
        code, out, err = run_main(argv, monkeypatch, capsys)
        lines = err.strip().splitlines()
        if code != 2 or out or len(lines) != 1 or "Traceback" in err:
            problems.append(f"{argv!r}: exit {code}, stdout {out!r}, stderr {err!r}")
        elif not lines[0].startswith("boxui"):
            problems.append(f"{argv!r}: {lines[0]!r} does not say it is boxui")
        fault.cycle()
    assert problems == []
    after = snapshot(sandbox)
    created = sorted(after - before)
    # at most the state dir's own skeleton: no machine, nothing elsewhere
    assert all(p.startswith("state") for p in created), created
    assert not any(p.startswith("state/home/machines/") for p in created), created
    covered = set(NAMED) | UNNAMED
    commands = set()
    for name, command in cli.all_commands.items():
        if isinstance(command, click.Group):
            commands |= {f"{name} {sub}" for sub in command.commands}
        else:
            commands.add(name)
    assert commands == covered, "a command is missing from the bad-input table"


@pytest.mark.fault("10. bad input to every CLI command")
def test_unusable_state_dir_is_one_line(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        fault: FaultRecorder) -> None:
    """BOXUI_HOME naming a file, or a dir under a file: exit 1 with one line."""
    for home in (sandbox / "a-file", sandbox / "a-file" / "sub"):
        monkeypatch.setenv("BOXUI_HOME", str(home))
        for argv in (["ls"], ["info", "ok"], ["events"], ["create", "--no-start", "ok"],
                     ["start", "ok"], ["stop", "ok"], ["rm", "ok"], ["daemon"],
                     ["logs", "ok"], ["ssh-config", "ok"]):
            code, out, err = run_main(argv, monkeypatch, capsys)
            assert code == 1 and out == "", (argv, code, out, err)
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert str(home) in err, err
            fault.cycle()


@pytest.mark.fault("10. bad input to every CLI command")
@pytest.mark.parametrize("argv", [["create", "../x"], ["start", "--", "-rf"],
                                  ["create", "ok", "--vcpus", "0"], ["events", "-n", "-1"]])
def test_real_processes_agree(tmp_path: Path, argv: list[str], fault: FaultRecorder) -> None:
    home = tmp_path / "home"
    out = subprocess.run([*BOXUI, *argv], capture_output=True, text=True, cwd=tmp_path,
                         env=cli_env(home) | {"HOME": str(tmp_path)}, timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    created = sorted(snapshot(tmp_path))
    # at most the state dir's own skeleton: no machine, nothing elsewhere
    assert all(p == "home" or p.startswith("home/") for p in created), created
    assert not any(p.startswith("home/machines/") for p in created), created
    fault.cycle()
