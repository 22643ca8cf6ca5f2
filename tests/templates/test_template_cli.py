from __future__ import annotations

import json
import subprocess
from pathlib import Path

from backend.state.state_dir import StateDir
from backend.templates.layout import TemplateDir, templates_root
from backend.templates.machine_from_template import spec_from_template
from backend.templates.revision_store import current_revision, summaries
from tests.conftest import BOXUI, cli_env
from tests.daemon_helpers import daemon_running
from tests.templates.helpers import (
    REVISION,
    fabricate,
    fake_base_image,
    host_snapshot_info,
    snapshot_info,
)

FUTURE = 'schema_version = 9\ntemplate_id = "web"\n[[variants]]\nrole = "w"\n'
FUTURE_ERROR = ("key 'schema_version': value error, schema_version 9 is newer than this "
                "boxui understands (1); upgrade boxui")


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOXUI, *args], capture_output=True, text=True,
                          env=cli_env(home), timeout=60)


def test_ls_revisions_json_and_text(home: Path, dirs: StateDir) -> None:
    assert "no templates yet" in run(home, "template", "ls").stdout
    fabricate(dirs, snapshot=snapshot_info())
    fabricate(dirs, "img")
    listed = json.loads(run(home, "template", "ls", "--json").stdout)
    assert [(t["template_id"], t["kind"], t["current"], t["roles"]) for t in listed] == [
        ("img", "image", REVISION, ["worker"]), ("web", "snapshot", REVISION, ["worker"])]
    text = run(home, "template", "ls").stdout
    assert text.splitlines()[0].split() == ["TEMPLATE", "CURRENT", "KIND", "ROLES", "REVISIONS"]
    revs = json.loads(run(home, "template", "revisions", "web", "--json").stdout)
    assert revs[0]["current"] is True
    assert revs[0]["variants"]["worker"]["snapshot"]["memory_mib"] == 256
    assert f"* {REVISION}" in run(home, "template", "revisions", "web").stdout
    missing = run(home, "template", "revisions", "nope")
    assert missing.returncode == 1 and "no template named 'nope'" in missing.stderr


def test_rm_refuses_while_machines_use_it(home: Path, dirs: StateDir) -> None:
    fabricate(dirs, snapshot=host_snapshot_info())
    spec = spec_from_template(dirs, "user1", "web")
    assert run(home, "create", "user1", "--template", "web", "--no-start").returncode == 0
    refused = run(home, "template", "rm", "web")
    assert refused.returncode == 1 and "user1" in refused.stderr
    current = run(home, "template", "rm", "web", "--revision", REVISION, "--force")
    assert current.returncode == 1 and "current one" in current.stderr
    removed = json.loads(run(home, "template", "rm", "web", "--force", "--json").stdout)
    assert removed == {"removed": ["web"], "machines_left_without_it": ["user1"]}
    assert summaries(dirs) == [] and spec.template == "web:worker"


def test_build_refuses_future_schema_with_one_line(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(FUTURE)
    out = run(home, "template", "build", str(path))
    assert out.returncode == 1
    assert out.stderr.strip() == f"boxui: {path}: {FUTURE_ERROR}"
    gone = run(home, "template", "build", "nothing-here")
    assert (gone.returncode, gone.stderr) == (1, "boxui: no template with id 'nothing-here'\n")
    assert not (home / "run" / "api.sock").exists()  # bad input started no daemon


def test_build_goes_through_a_running_daemon(home: Path, dirs: StateDir,
                                              tmp_path: Path) -> None:
    """The daemon holds the state dir's lock, so only a build it runs can succeed."""
    fake_base_image(dirs)
    path = tmp_path / "web.toml"
    path.write_text('template_id = "web"\n[[variants]]\nrole = "worker"\n')
    (tmp_path / "future.toml").write_text(FUTURE)
    with daemon_running(home):
        built = run(home, "template", "build", str(path))
        assert built.returncode == 0, built.stderr
        revision = current_revision(TemplateDir.of(dirs, "web"))
        assert built.stderr == "template: building web-worker (role worker, image)\n"
        assert built.stdout.splitlines()[0] == (
            f"web: built revision {revision} (image); current -> {revision} "
            "(its first revision)")
        again = run(home, "template", "build", "web", "--snapshot", "--json")
        assert again.returncode == 0, again.stderr
        note = ("the stand-in driver cannot save snapshots; built an image template "
                "(machines cold-boot)")
        assert again.stderr == f"template: {note}\n"
        result = json.loads(again.stdout)
        assert (result["revision"], result["cache_hit"], result["notes"]) == (
            revision, True, [note])
        future = run(home, "template", "build", str(tmp_path / "future.toml"))
        assert (future.returncode, future.stderr) == (
            1, f"boxui: {tmp_path / 'future.toml'}: {FUTURE_ERROR}\n")
        missing = run(home, "template", "build", "nothing-here")
        assert (missing.returncode, missing.stderr) == (
            1, "boxui: no template with id 'nothing-here'\n")
    assert sorted(p.name for p in templates_root(dirs).iterdir()) == ["web"]
