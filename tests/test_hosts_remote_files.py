"""This machine's files for commands on a remote boxui behind a real sshd (started here):
`cp` each way, `run --input/--export` and `create --provision`, staged through a private
dir of the remote's state dir that is gone afterwards, whatever happened.

`cp`'s machine is test_file_copy's: an engine holding the remote's state dir says it is
ready, and an asyncssh SFTP server serves a dir as its `/`. `run` and `create` run on the
remote's stand-in daemon, whose "guest" commands run on this host."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.hosts.registry import load_hosts
from backend.state.state_dir import open_state_dir
from boxui.cli.remote_files import RemoteStage, rewrite_options
from tests.daemon_helpers import daemon_running, kill_stand_ins
from tests.sshd_helpers import Sshd
from tests.test_cells_recovery import wait_until
from tests.test_file_copy import Guest, make_tree, running_guest, tree
from tests.test_hosts_remote import BOXUI_BIN, add, run
from tests.test_hosts_remote import sshd as sshd  # the fixture
from tests.test_hosts_remote_kept import there


@pytest.fixture
def guest(sshd: Sshd, tmp_path: Path) -> Iterator[Guest]:
    """Machine `vm` of the remote."""
    with running_guest(sshd.remote_home, tmp_path) as running:
        yield running


@pytest.fixture
def home(sshd: Sshd, tmp_path: Path) -> Path:
    """This machine's state dir, with the remote added as host r1."""
    local = tmp_path / "local"
    add(sshd, local, "r1")
    return local


def staged(sshd: Sshd) -> list[str]:
    base = sshd.remote_home / "staging"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def test_a_file_and_a_folder_go_each_way(sshd: Sshd, guest: Guest, home: Path,
                                         tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    (here / "tool").write_bytes(os.urandom(200_000))
    (here / "tool").chmod(0o754)
    out = run(sshd, home, "cp", str(here / "tool"), "vm:/tool", "--host", "r1")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out.stderr
    assert (guest.root / "tool").read_bytes() == (here / "tool").read_bytes()
    assert stat.S_IMODE((guest.root / "tool").stat().st_mode) == 0o754
    (guest.root / "opt").mkdir()  # a dir receives it under its own name
    assert run(sshd, home, "cp", str(here / "tool"), "vm:/opt", "--host", "r1").returncode == 0
    assert (guest.root / "opt" / "tool").exists()
    # without a kept connection, on the command's own
    back = run(sshd, home, "cp", "vm:/opt/tool", str(here / "back"),
               env={"BOXUI_HOST": "r1", "BOXUI_HOST_LINK_IDLE": "0"})
    assert (back.returncode, back.stdout, back.stderr) == (0, "", "")
    assert (here / "back").read_bytes() == (here / "tool").read_bytes()
    make_tree(here / "proj")
    assert run(sshd, home, "cp", "-r", str(here / "proj"), "vm:/", "--host", "r1"
               ).returncode == 0
    assert tree(guest.root / "proj") == tree(here / "proj")
    (here / "into").mkdir()
    out = run(sshd, home, "cp", "-r", "vm:/proj", str(here / "into"), "--host", "r1")
    assert out.returncode == 0, out.stderr
    assert tree(here / "into" / "proj") == tree(here / "proj")
    assert staged(sshd) == []
    mode = stat.S_IMODE((sshd.remote_home / "staging").stat().st_mode)
    assert mode == 0o700


def test_a_failed_copy_says_what_cp_says_and_leaves_no_stage(
        sshd: Sshd, guest: Guest, home: Path, tmp_path: Path) -> None:
    here = tmp_path / "here"
    (here / "dir").mkdir(parents=True)
    (here / "f").write_text("x")
    for args in (["cp", str(here / "f"), "vm:/ro/f"],  # refused in the machine
                 ["cp", "vm:/nothing", str(here / "g")],  # no such file there
                 ["cp", str(here / "dir"), "vm:/"],  # a folder without -r: refused here
                 ["cp", "vm:/ro", str(here / "none" / "x")],  # no local dir to put it in
                 ["cp", str(here / "f"), "vm:/ro/f", "--bad"]):
        remote = run(sshd, home, *args, "--host", "r1")
        own = there(sshd, *args)  # the same paths, as the remote's own cp
        assert (remote.returncode, remote.stdout, remote.stderr) == \
            (own.returncode, own.stdout, own.stderr), args
        assert remote.returncode != 0 and remote.stderr.count("\n") == 1, remote.stderr
    assert not (here / "g").exists() and not (guest.root / "ro" / "f").exists()
    assert staged(sshd) == []


def test_a_stage_is_removed_when_its_block_is_interrupted(
        sshd: Sshd, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Ctrl-C raises mid-command: the stage goes with what was put in it."""
    for name, value in sshd.client_env(home).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "big").write_bytes(os.urandom(1 << 20))
    host = load_hosts(open_state_dir(home))["r1"]
    with pytest.raises(KeyboardInterrupt), RemoteStage(host) as stage:
        stage.put(str(tmp_path / "big"), "big")
        assert staged(sshd) == [Path(stage.path).name]
        raise KeyboardInterrupt
    assert staged(sshd) == []


def test_ctrl_c_mid_copy_leaves_no_stage(sshd: Sshd, guest: Guest, home: Path,
                                         tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(96 << 20))  # long enough to be interrupted on its way
    copying = subprocess.Popen([str(BOXUI_BIN), "cp", str(big), "vm:/big", "--host", "r1"],
                               env=sshd.client_env(home), stderr=subprocess.PIPE, text=True)
    try:
        wait_until("a stage there", lambda: staged(sshd) != [] or copying.poll() is not None)
        copying.send_signal(signal.SIGINT)
        _, err = copying.communicate(timeout=60)
    finally:
        if copying.poll() is None:
            copying.kill()
    assert copying.returncode == 130, err  # interrupted, not done
    assert "Traceback" not in err and "left behind" not in err, err
    assert staged(sshd) == []


def test_run_takes_inputs_and_gives_exports_through_a_stage(
        sshd: Sshd, home: Path, tmp_path: Path) -> None:
    work = tmp_path / "guest-work"  # a stand-in's "guest" path is a path of this host
    work.mkdir()
    (tmp_path / "in.txt").write_text("payload\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        with daemon_running(sshd.remote_home):
            done = run(sshd, home, "run", "--host", "r1",
                       f"--input={tmp_path / 'in.txt'}:{work}/in.txt",
                       "--export", f"{work}/res.txt:{out_dir}", "--",
                       "sh", "-c", f"cat {work}/in.txt > {work}/res.txt; echo made; exit 3")
            assert (done.returncode, done.stdout) == (3, "made\n"), done.stderr
            assert (out_dir / "res.txt").read_text() == "payload\n"
            script = tmp_path / "setup.sh"
            script.write_text("#!/bin/sh\necho set up\n")
            made = run(sshd, home, "create", "web", "--no-start", "--provision", str(script),
                       env={"BOXUI_HOST": "r1"})
            assert made.returncode == 0, made.stderr
            copied = sshd.remote_home / "machines" / "web" / "provision"
            assert [p.read_text() for p in copied.glob("*setup.sh")] == [script.read_text()]
    finally:
        kill_stand_ins(sshd.remote_home)
    assert staged(sshd) == []


def test_the_options_are_given_their_staged_values_in_turn() -> None:
    args = ["run", "--input", "a:/x", "--env=K=--input", "--input=b:/y", "--export", "/o",
            "--", "sh", "--input", "c"]
    assert rewrite_options(args, {"--input": ["S1:/x", "S2:/y"], "--export": ["/o:S3"]}) == [
        "run", "--input", "S1:/x", "--env=K=--input", "--input", "S2:/y", "--export",
        "/o:S3", "--", "sh", "--input", "c"]
