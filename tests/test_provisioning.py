"""Provisioning over the stand-in driver: the scripts run in a host `sh` (the product
runs them in the guest over SSH; `test_provisioning_vm` covers that), so the logic --
once, in order, recorded, copied at create, failure leaving the machine failed -- is
checked without VMs."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from backend.state.engine import Engine
from backend.state.event_log import read_log
from backend.state.lifecycle import InstanceState
from backend.state.machine_store import MachineStore
from backend.state.state_dir import open_state_dir
from backend.supervision.provisioning import (
    PROVISION_TYPE_PREFIX,
    ProvisionRecord,
    install_scripts,
    read_record,
    write_record,
)
from backend.supervision.ssh_access import ByteSink
from tests.api_helpers import Api, running_api
from tests.conftest import BOXUI, cli_env, spec
from tests.fake_driver import FakeDriver
from tests.fake_exec import GatedRunner


class HostSh:
    """Runs a script with the host's `sh` in `workdir`; remembers each run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runs: list[tuple[str, bytes]] = []

    async def __call__(self, name: str, port: int, script: bytes, sink: ByteSink) -> int:
        self.runs.append((name, script))
        proc = await asyncio.create_subprocess_exec(
            "sh", "-s", cwd=self.workdir, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(script)
        proc.stdin.close()
        async with asyncio.timeout(30):
            while chunk := await proc.stdout.read(4096):
                sink.write(chunk)
            return await proc.wait()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def host_sh(workdir: Path) -> HostSh:
    return HostSh(workdir)


@pytest.fixture
async def papi(engine: Engine, driver: FakeDriver, host_sh: HostSh) -> AsyncIterator[Api]:
    async with running_api(engine, driver, GatedRunner(), host_sh) as running:
        yield running


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def provision_events(engine: Engine, name: str) -> list[dict[str, object]]:
    return [{"kind": e.type.removeprefix(PROVISION_TYPE_PREFIX), **e.data}
            for e in read_log(engine.dirs.event_log).events
            if e.subject == name and e.type.startswith(PROVISION_TYPE_PREFIX)]


async def create(api: Api, name: str, scripts: list[str], start: bool = True) -> httpx.Response:
    return await api.client.post("/v1/machines", params={"start": start},
                                 json={"name": name, "provision": scripts})


async def test_scripts_run_once_in_order_from_their_copies(papi: Api, engine: Engine,
                                                           tmp_path: Path, workdir: Path,
                                                           host_sh: HostSh) -> None:
    first = script(tmp_path, "one.sh", "echo one >> order\necho hello from one\n")
    second = script(tmp_path, "two.sh", "echo two >> order\nprintf 'no newline'\n")
    created = await create(papi, "vm", [first, second])
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "ready"
    assert (workdir / "order").read_text() == "one\ntwo\n"
    record = read_record(engine.dirs.machine_dir("vm"))
    assert record is not None and record.status == "done"
    assert record.scripts == ["01-one.sh", "02-two.sh"]
    events = provision_events(engine, "vm")
    kinds = [e["kind"] for e in events]
    assert kinds == ["provisioning", "output", "provisioned", "provisioning", "output",
                     "provisioned"]
    assert events[1]["message"] == "hello from one" and events[4]["message"] == "no newline"
    assert events[2]["exit_code"] == 0 and isinstance(events[2]["duration_seconds"], float)
    log = (engine.dirs.machine_dir("vm") / "provision" / "output.log").read_text()
    assert "hello from one" in log and "==> 02-two.sh exited 0" in log

    # the host file changing later changes nothing: the copy runs
    Path(first).write_text("echo changed >> order\n")
    # a restart does not run anything again
    assert (await papi.client.post("/v1/machines/vm/restart")).json()["state"] == "ready"
    await asyncio.sleep(0.2)  # the watch would start a run now: give it the chance
    assert len(host_sh.runs) == 2
    # `provision` runs them again, from the copies
    again = await papi.client.post("/v1/machines/vm/provision")
    assert again.status_code == 200, again.text
    assert (workdir / "order").read_text() == "one\ntwo\none\ntwo\n"


async def test_failing_script_leaves_machine_failed_with_its_last_lines(
        papi: Api, engine: Engine, tmp_path: Path, workdir: Path, host_sh: HostSh) -> None:
    bad = script(tmp_path, "bad.sh", "echo trying\necho 'E: no such package' >&2\n"
                 "test -e fixed || exit 3\necho fixed run\n")
    never = script(tmp_path, "never.sh", "echo ran >> never\n")
    created = await create(papi, "vm", [bad, never])
    assert created.status_code == 409, created.text
    body = created.json()
    assert body["code"] == "provision_failed" and "E: no such package" in body["message"]
    machine = engine.machine("vm")
    assert machine.state is InstanceState.FAILED
    assert machine.reason is not None and "exited 3" in machine.reason
    assert "E: no such package" in machine.reason
    assert "vm" not in papi.ctx.supervisor.handles  # the guest was powered off
    assert not (workdir / "never").exists()
    record = read_record(engine.dirs.machine_dir("vm"))
    assert record is not None and record.status == "failed" and record.exit_code == 3

    # starting it again runs nothing; `provision` re-runs all of them
    assert (await papi.client.post("/v1/machines/vm/start")).json()["state"] == "ready"
    await asyncio.sleep(0.2)
    assert len(host_sh.runs) == 1
    (workdir / "fixed").touch()
    again = await papi.client.post("/v1/machines/vm/provision")
    assert again.status_code == 200, again.text
    assert (workdir / "never").read_text() == "ran\n"
    assert engine.projection.state_of("vm") is InstanceState.READY


async def test_a_run_cut_short_by_boxui_is_failed_interrupted_not_repeated(
        papi: Api, engine: Engine, tmp_path: Path, host_sh: HostSh) -> None:
    once = script(tmp_path, "once.sh", "echo once\n")
    assert (await create(papi, "vm", [once], start=False)).status_code == 201
    directory = engine.dirs.machine_dir("vm")
    record = read_record(directory)
    assert record is not None and record.status == "pending"
    # as a supervisor killed while the script ran leaves it
    write_record(directory, ProvisionRecord(status="running", scripts=record.scripts))
    await papi.client.post("/v1/machines/vm/start")
    async with asyncio.timeout(10):
        while engine.machine("vm").state is not InstanceState.FAILED:
            await asyncio.sleep(0.02)
    assert host_sh.runs == []
    assert "interrupted" in (engine.machine("vm").reason or "")
    assert "vm" not in papi.ctx.supervisor.handles
    # never by itself again; only when asked
    assert (await papi.client.post("/v1/machines/vm/start")).json()["state"] == "ready"
    assert (await papi.client.post("/v1/machines/vm/provision")).status_code == 200
    assert len(host_sh.runs) == 1


async def test_first_start_returns_after_the_scripts(papi: Api, engine: Engine,
                                                     tmp_path: Path, workdir: Path) -> None:
    slow = script(tmp_path, "slow.sh", "sleep 0.3\necho done > slow\n")
    assert (await create(papi, "vm", [slow], start=False)).status_code == 201
    assert not (workdir / "slow").exists()
    started = await papi.client.post("/v1/machines/vm/start")
    assert started.json()["state"] == "ready"
    assert (workdir / "slow").read_text() == "done\n"  # ran before start returned
    record = read_record(engine.dirs.machine_dir("vm"))
    assert record is not None and record.status == "done"


async def test_bad_requests(papi: Api, engine: Engine, tmp_path: Path) -> None:
    missing = await create(papi, "vm", [str(tmp_path / "nope.sh")])
    assert missing.status_code == 409
    assert "nope.sh" in missing.json()["message"]
    assert not engine.store.exists("vm")
    assert (await create(papi, "plain", [])).status_code == 201
    none = await papi.client.post("/v1/machines/plain/provision")
    assert none.status_code == 409 and none.json()["code"] == "no_scripts"
    ok = script(tmp_path, "ok.sh", "true\n")
    await create(papi, "idle", [ok], start=False)
    stopped = await papi.client.post("/v1/machines/idle/provision")
    assert stopped.status_code == 409 and stopped.json()["code"] == "not_running"
    text = (engine.dirs.machine_dir("idle") / "machine.toml").read_text()
    assert json.dumps(ok) in text  # the host path is recorded; the copy is what runs


async def test_chatty_output_costs_few_events_and_loses_no_line(
        papi: Api, engine: Engine, tmp_path: Path) -> None:
    chatty = script(tmp_path, "chatty.sh", "i=0; while [ $i -lt 500 ]; do echo line $i; "
                    "i=$((i+1)); done\n")
    assert (await create(papi, "vm", [chatty])).status_code == 201
    outputs = [e for e in provision_events(engine, "vm") if e["kind"] == "output"]
    lines = "\n".join(str(e["message"]) for e in outputs).splitlines()
    assert lines == [f"line {i}" for i in range(500)]
    assert sum(int(str(e["lines"])) for e in outputs) == 500
    assert len(outputs) < 100  # batched while the previous event is written


def test_logs_provision_prints_the_output_log(home: Path, tmp_path: Path) -> None:
    def logs(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BOXUI, "logs", name, "--provision"], capture_output=True,
                              text=True, env=cli_env(home), timeout=60)

    dirs = open_state_dir(home)
    store = MachineStore(dirs)
    store.create(spec("plain"))
    assert logs("plain").returncode == 1
    assert logs("plain").stderr == "boxui: plain has no provision scripts\n"
    store.create(spec("vm"))
    install_scripts(dirs.machine_dir("vm"), [("a.sh", b"echo hi\n")])
    assert "has no provision output yet" in logs("vm").stderr
    (dirs.machine_dir("vm") / "provision" / "output.log").write_text("==> a.sh\nhi\n")
    shown = logs("vm")
    assert shown.returncode == 0 and shown.stdout == "==> a.sh\nhi\n"
