"""A remote boxui and a plain host behind a real sshd on 127.0.0.1, started here.

The remote's daemon runs over the stand-in driver (started by the test in the remote's
state dir, where the remote `boxui` then finds it), so this tests the remote path, not
guests; `test_hosts_remote_vm.py` runs one real guest's exec through it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import daemon_running
from tests.sshd_helpers import Sshd, remote_boxui_sshd

BOXUI_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "boxui"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    with remote_boxui_sshd(tmp_path) as server:
        yield server
    stop_keepers_of(tmp_path / "local")


def stop_keepers_of(home: Path) -> None:
    """The kept SSH connections a test's CLI calls left (they would idle out in 60 s)."""
    from backend.hosts.kept_link import stop_keepers
    from backend.state.state_dir import open_state_dir

    if home.exists():
        stop_keepers(open_state_dir(home))


def run(sshd: Sshd, home: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed `boxui` (the native client first, as users run it)."""
    out = subprocess.run([str(BOXUI_BIN), *args], capture_output=True, text=True,
                         env=sshd.client_env(home) | (env or {}), timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def add(sshd: Sshd, home: Path, name: str, *more: str) -> None:
    out = run(sshd, home, "host", "add", name, sshd.address, "--identity",
              str(sshd.identity), *more)
    assert out.returncode == 0, out.stderr


def test_machines_on_a_remote_boxui(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "r1")
    with daemon_running(sshd.remote_home):
        created = run(sshd, home, "create", "web", "--host", "r1", "--json")
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["state"] == "ready"
        # the remote's socket is remembered: the next command checks it, runs no boxui there
        remembered = (home / "run" / "host-r1.endpoint").read_text().strip()
        assert remembered == str(sshd.remote_home / "run" / "api.sock")
        listed = run(sshd, home, "ls", "--host", "r1", "--json")
        assert [m["name"] for m in json.loads(listed.stdout)] == ["web"], listed.stderr
        assert run(sshd, home, "ls", "--json").stdout.strip() == "[]"  # nothing local
        hello = run(sshd, home, "exec", "--host", "r1", "web", "--", "sh", "-c",
                    "echo $BOXUI_HOME; exit 3")
        assert (hello.returncode, hello.stdout) == (3, f"{sshd.remote_home}\n"), hello.stderr
        stopped = run(sshd, home, "stop", "web", env={"BOXUI_HOST": "r1"})
        assert stopped.stdout.strip() == "web: stopped: powered off (ACPI)", stopped.stderr
        assert run(sshd, home, "host", "use", "r1").returncode == 0
        assert run(sshd, home, "start", "web").returncode == 0
        # the native client's exec must not run locally while another host is chosen
        there = run(sshd, home, "exec", "web", "--", "sh", "-c", "echo $BOXUI_HOME")
        assert there.stdout == f"{sshd.remote_home}\n", there.stderr
        info = run(sshd, home, "info", "web", "--json")
        assert json.loads(info.stdout)["state"] == "ready", info.stderr
        events = run(sshd, home, "events", "web", "--last", "1")
        assert "ready" in events.stdout, events.stderr
        assert run(sshd, home, "rm", "web", "--force").returncode == 0
        assert run(sshd, home, "ls", "--json", "--host", "r1").stdout.strip() == "[]"
    assert not os.path.exists(home / "machines" / "web")


def test_a_remote_daemon_is_started_on_demand(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "r1")
    # no daemon there: the remote boxui starts one (its real QEMU driver: nothing boots)
    created = run(sshd, home, "create", "vm", "--no-start", "--host", "r1")
    assert created.returncode == 0, created.stderr
    assert created.stderr.startswith("started boxui daemon on r1, pid "), created.stderr
    again = run(sshd, home, "ls", "--host", "r1", "--json")
    assert json.loads(again.stdout)[0]["state"] == "stopped"
    from tests.conftest import stop_background_daemons

    stop_background_daemons(sshd.remote_home)


def test_plain_host_figures_and_a_session(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "build", "--plain")
    listed = run(sshd, home, "host", "ls", "--json")
    build = next(h for h in json.loads(listed.stdout) if h["name"] == "build")
    assert build["reachable"] is True and build["latency_ms"] > 0, build
    facts = build["facts"]
    assert len(facts["load"]) == 3 and facts["memory"]["total"] > 0
    assert 0 < facts["disk"]["used"] < facts["disk"]["total"]
    assert isinstance(facts["users"], list)
    table = run(sshd, home, "host", "ls").stdout
    assert "build" in table and "load " in table, table
    refused = run(sshd, home, "ls", "--host", "build")
    assert refused.returncode == 1 and "plain host" in refused.stderr, refused.stderr
    # `boxui ssh NAME` runs the system ssh with the host's definition; the shim only
    # points it at the test's known_hosts (ssh reads the user's passwd home, not $HOME)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ssh").write_text("#!/bin/sh\nexec /usr/bin/ssh -F /dev/null -o BatchMode=yes "
                              f"-o UserKnownHostsFile={sshd.client_home}/.ssh/known_hosts "
                              '"$@"\n')
    (shim / "ssh").chmod(0o755)
    session = run(sshd, home, "ssh", "build", "echo", "from-build",
                  env={"PATH": f"{shim}:{os.environ['PATH']}"})
    assert (session.returncode, session.stdout) == (0, "from-build\n"), session.stderr


def test_partition_and_host_key_mismatch_are_one_line(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "r1")
    sshd.stop()
    down = run(sshd, home, "ls", "--host", "r1")
    assert down.returncode == 1, down.stderr
    assert down.stderr.count("\n") == 1 and "unreachable" in down.stderr, down.stderr
    changed = run(sshd, home, "start", "vm", "--host", "r1")
    assert changed.returncode == 1 and "unreachable" in changed.stderr, changed.stderr
    listed = json.loads(run(sshd, home, "host", "ls", "--json").stdout)
    assert listed[1]["reachable"] is False and "unreachable" in listed[1]["reason"]
    sshd.start()
    known = sshd.client_home / ".ssh" / "known_hosts"
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True, timeout=30)
    known.write_text(f"[127.0.0.1]:{sshd.port} {(tmp_path / 'other_key.pub').read_text()}")
    refused = run(sshd, home, "create", "vm", "--host", "r1")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "host key" in refused.stderr and "refused" in refused.stderr, refused.stderr
    assert not (sshd.remote_home / "machines").exists()  # nothing reached the remote


def test_a_remote_without_boxui_says_how_to_install_it(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    keys = sshd.root / "authorized_keys"
    line = keys.read_text()
    keys.write_text(line.replace(str(Path(BOXUI_BIN).parent) + ":", ""))  # no boxui on PATH
    add(sshd, home, "bare")
    out = run(sshd, home, "create", "vm", "--host", "bare")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "no boxui on its PATH" in out.stderr and "bin/setup" in out.stderr
    listed = run(sshd, home, "ls", "--host", "bare")
    assert listed.returncode == 1 and "no boxui on its PATH" in listed.stderr


def test_templates_ports_images_services_and_the_daemon_are_the_remotes(
        sshd: Sshd, tmp_path: Path) -> None:
    from backend.state.state_dir import open_state_dir
    from tests.templates.helpers import fabricate

    home = tmp_path / "local"
    add(sshd, home, "r1")
    fabricate(open_state_dir(sshd.remote_home), "web", "worker", vcpus=2, memory_mib=320)
    recipes = sshd.remote_home / "images" / "recipes"
    recipes.mkdir(parents=True)
    shipped = Path(__file__).resolve().parent.parent / "backend/images/recipes/debian-12.toml"
    (recipes / "only-there.toml").write_text(shipped.read_text())
    with daemon_running(sshd.remote_home):
        # the template is the remote's: resolved there (here there is none)
        made = run(sshd, home, "create", "w1", "--host", "r1", "--template", "web",
                   "--no-start", "--json")
        assert made.returncode == 0, made.stderr
        spec = json.loads(made.stdout)["spec"]
        assert (spec["template"], spec["vcpus"], spec["memory_mib"]) == ("web:worker", 2, 320)
        here = run(sshd, home, "create", "w2", "--template", "web", "--no-start")
        assert here.returncode == 1 and "no template named 'web'" in here.stderr
        added = run(sshd, home, "port", "add", "w1", "18080:80", "--host", "r1")
        assert added.stdout == "w1: 127.0.0.1:18080 -> guest 80/tcp (from its next start)\n", \
            added.stderr
        listed = run(sshd, home, "port", "ls", "--host", "r1", "w1", "--json")
        assert [(p["guest"], p["host"]) for p in json.loads(listed.stdout)] == [(80, 18080)]
        assert run(sshd, home, "port", "ls", "w1").returncode == 1  # no such machine here
        assert run(sshd, home, "port", "rm", "w1", "80", "--host", "r1").returncode == 0
        assert "forwards no ports" in run(sshd, home, "port", "ls", "w1", "--host", "r1").stdout
        images = json.loads(run(sshd, home, "image", "ls", "--host", "r1", "--json").stdout)
        assert "only-there" in [i["name"] for i in images]
        local_images = json.loads(run(sshd, home, "image", "ls", "--json").stdout)
        assert "only-there" not in [i["name"] for i in local_images]
        service = run(sshd, home, "service", "create", "api", "--replicas", "0",
                      env={"BOXUI_HOST": "r1"})
        assert service.returncode == 0, service.stderr
        there = json.loads(run(sshd, home, "service", "ls", "--host", "r1", "--json").stdout)
        assert [s["spec"]["name"] for s in there] == ["api"]
        assert json.loads(run(sshd, home, "service", "ls", "--json").stdout) == []
        status = run(sshd, home, "daemon", "status", "--host", "r1", "--json")
        assert json.loads(status.stdout)["state_dir"] == str(sshd.remote_home), status.stderr
        assert run(sshd, home, "daemon", "status").returncode == 1  # none serves here
        assert run(sshd, home, "rm", "w1", "--host", "r1").returncode == 0


def test_machine_commands_on_a_plain_host_are_one_line(sshd: Sshd, tmp_path: Path) -> None:
    home = tmp_path / "local"
    add(sshd, home, "build", "--plain")
    for args in (["create", "vm"], ["exec", "vm", "--", "true"], ["port", "ls", "vm"],
                 ["image", "ls"]):
        out = run(sshd, home, *args, "--host", "build") if args[0] != "exec" else \
            run(sshd, home, "exec", "--host", "build", "vm", "--", "true")
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "build is a plain host" in out.stderr, out.stderr
