"""`boxui ssh-config --install`: one Include line in ~/.ssh/config however often it runs,
the user's file kept whole (mode, symlink, content), a Host entry per machine that `ssh
-G` resolves with the host key pinned, and a supervisor that keeps the file current as
machines come, boot and go."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.guest.machine_seed import create_machine_keys
from backend.state.engine import Engine
from backend.state.lifecycle import Verb
from backend.state.process_liveness import start_time_of
from backend.state.runtime_record import RuntimeRecord
from backend.state.state_dir import open_state_dir
from backend.supervision.ssh_config_file import config_path, known_hosts_file
from tests.api_helpers import Api
from tests.conftest import BOXUI, cli_env, spec

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")


def install(home: Path, user_home: Path) -> subprocess.CompletedProcess[str]:
    env = cli_env(home) | {"HOME": str(user_home)}
    return subprocess.run([*BOXUI, "ssh-config", "--install"], capture_output=True,
                          text=True, env=env, timeout=30)


async def _machines(home: Path) -> None:
    engine = await Engine.open(home)
    try:
        await engine.create_machine(spec("web"))
        await engine.create_machine(spec("db"))
        create_machine_keys(engine.dirs.machine_dir("web"))
        create_machine_keys(engine.dirs.machine_dir("db"))
        await engine.transition("web", Verb.BOOTING, update=_port(41234))
        await engine.transition("web", Verb.READY)
    finally:
        await engine.close()


def _port(port: int) -> Callable[[RuntimeRecord], None]:
    """Running on `port` as a live process (this one), as boxui would vouch for with no
    supervisor: the CLI installs with none running."""

    def apply(record: RuntimeRecord) -> None:
        record.ssh_port, record.pid = port, os.getpid()
        record.process_start_time = start_time_of(os.getpid())

    return apply


def resolved(user_home: Path, host: str) -> dict[str, str]:
    """What `ssh` would use for `host` (`ssh -G` connects to nothing)."""
    out = subprocess.run(["ssh", "-F", str(user_home / ".ssh" / "config"), "-G", host],
                         capture_output=True, text=True, timeout=10, check=True,
                         env={**os.environ, "HOME": str(user_home)})
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


@needs_ssh
async def test_install_twice_includes_once_and_keeps_the_users_config(
        home: Path, tmp_path: Path) -> None:
    await _machines(home)
    user_home = tmp_path / "user"
    (user_home / "dotfiles").mkdir(parents=True)
    ssh_dir = user_home / ".ssh"
    assert not ssh_dir.exists()
    first = install(home, user_home)
    assert first.returncode == 0, first.stderr
    assert "added an Include line" in first.stdout
    assert ssh_dir.stat().st_mode & 0o777 == 0o700
    user_config = ssh_dir / "config"
    assert user_config.stat().st_mode & 0o777 == 0o600
    assert config_path(open_state_dir(home)).stat().st_mode & 0o777 == 0o600

    # the user's own file, a symlink into their dotfiles, mode 0644: all kept
    real = user_home / "dotfiles" / "ssh_config"
    real.write_text("Host work\n    User me\n")
    real.chmod(0o644)
    user_config.unlink()
    user_config.symlink_to(real)
    for _ in range(2):
        again = install(home, user_home)
        assert again.returncode == 0, again.stderr
    assert user_config.is_symlink() and real.stat().st_mode & 0o777 == 0o644
    text = real.read_text()
    assert text.count("Include ") == 1 and text.endswith("Host work\n    User me\n")
    assert text.index("Include ") < text.index("Host work")  # first: not scoped by a Host
    assert "already included" in again.stdout

    web = resolved(user_home, "web.boxui")
    assert (web["hostname"], web["port"], web["user"]) == ("127.0.0.1", "41234", "root")
    assert web["hostkeyalias"] == "web.boxui" and web["stricthostkeychecking"] == "true"
    assert web["userknownhostsfile"] == str(known_hosts_file(open_state_dir(home)))
    assert web["identityfile"] == str(home / "machines" / "web" / "id_ed25519")
    assert resolved(user_home, "work")["user"] == "me"
    pins = known_hosts_file(open_state_dir(home)).read_text().splitlines()
    assert sorted(line.split()[0] for line in pins) == ["db.boxui", "web.boxui"]
    db = resolved(user_home, "db.boxui")  # not running: ssh says so, never the host's port 22
    assert "boxui: db is stopped; start it with: boxui start db" in db["proxycommand"]
    stopped = subprocess.run(["ssh", "-F", str(user_config), "db.boxui", "true"],
                             capture_output=True, text=True, timeout=10,
                             env={**os.environ, "HOME": str(user_home)})
    assert stopped.returncode == 255
    assert "boxui: db is stopped; start it with: boxui start db" in stopped.stderr


def test_ssh_config_wants_a_name_or_install(home: Path) -> None:
    out = subprocess.run([*BOXUI, "ssh-config"], capture_output=True, text=True,
                         env=cli_env(home), timeout=30)
    assert out.returncode == 2 and "give a machine NAME, or --install" in out.stderr


async def test_the_supervisor_keeps_the_installed_file_current(api: Api, engine: Engine) -> None:
    path = config_path(engine.dirs)
    path.parent.mkdir(mode=0o700)
    path.write_text("")  # installed
    c = api.client
    assert (await c.post("/v1/machines", json={"name": "web"})).status_code == 201
    create_machine_keys(engine.dirs.machine_dir("web"))
    assert (await c.post("/v1/machines/web/start")).status_code == 200
    port = engine.store.load_record("web").ssh_port
    await _until(path, f"Host web.boxui\n    HostName 127.0.0.1\n    Port {port}\n")
    assert (await c.post("/v1/machines/web/stop")).status_code == 200
    await _until(path, "boxui: web is stopped")
    assert (await c.delete("/v1/machines/web")).status_code == 204
    await _until(path, "Host web.boxui", gone=True)


async def _until(path: Path, text: str, *, gone: bool = False, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while (text in path.read_text()) == gone:
            await asyncio.sleep(0.02)
