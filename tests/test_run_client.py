"""`boxui run` in the native client (boxui/cli/exec_client.c) over the exec socket
(backend/api/run_socket.py): the same output, exit codes, files and one-line errors as
the Python path, Ctrl-C and a killed client cancel the cell, and every command line it
is not sure of goes to the Python entry point untouched.

Commands "in the guest" run on the host (tests.fake_exec): a guest path is a host path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from backend.api.socket_frames import frame
from backend.state.cell_projection import CellVerb
from backend.state.engine import Engine
from tests.api_helpers import Api
from tests.fake_exec import GatedRunner
from tests.test_cells_api import cell_verbs
from tests.test_exec_client import _exchange, client_dir, serve_exec_socket_once

__all__ = ["client_dir"]  # the fixture, shared with the exec client's tests

PYTHON_PATH = [sys.executable, "-m", "boxui"]


async def start(argv: list[str], home: Path, cwd: Path | None = None
                ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, "BOXUI_HOME": str(home)})


async def run(argv: list[str], home: Path, cwd: Path | None = None) -> tuple[int, bytes, bytes]:
    proc = await start(argv, home, cwd)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


def native(client_dir: Path) -> list[str]:
    return [str(client_dir / "boxui")]


async def test_a_cell_is_the_same_as_the_python_paths(api: Api, engine: Engine,
                                                      client_dir: Path, tmp_path: Path) -> None:
    """Relative paths, resolved where the client runs; input, env, output, exit code,
    export; nothing handed to the Python entry point (the shim would echo its argv)."""
    guest = tmp_path / "guest"
    guest.mkdir()
    (tmp_path / "in.txt").write_bytes(b"payload\n")
    script = (f'cat {guest}/in.txt > {guest}/res.txt; echo "made $K"; echo warn >&2; '
              "exit 3")
    results = {}
    for name, entry in (("n1", native(client_dir)), ("p1", PYTHON_PATH)):
        out_dir = tmp_path / f"out-{name}"
        out_dir.mkdir()
        results[name] = await run(
            [*entry, "run", "--name", name, "--env", "K=v", "--input",
             f"sub/../in.txt:{guest}/in.txt", f"--export={guest}/res.txt:./out-{name}/.",
             "--", "sh", "-c", script], engine.dirs.root, cwd=tmp_path)
        assert (out_dir / "res.txt").read_bytes() == b"payload\n"
    assert results["n1"] == results["p1"] == (3, b"made v\n", b"warn\n")
    cells = {c["name"]: c for c in (await api.client.get("/v1/cells")).json()}
    assert cells["n1"]["artifacts"][0]["host_path"] == str(tmp_path / "out-n1" / "res.txt")
    assert not engine.store.exists("n1") and not engine.store.exists("p1")


@pytest.mark.parametrize(("args", "expected"), [
    (["--", "true"], (0, b"", b"")),
    (["--timeout", "0.2", "--", "hold", "t"],
     (124, b"", b"boxui: cell NAME: the command timed out after 0.2 s\n")),
    (["--keep", "true"], (0, b"", b"")),
])
async def test_exit_codes_and_lines_are_the_python_paths(
        api: Api, engine: Engine, client_dir: Path, args: list[str],
        expected: tuple[int, bytes, bytes]) -> None:
    for name, entry in (("n2", native(client_dir)), ("p2", PYTHON_PATH)):
        code, out, err = await run([*entry, "run", "--name", name, *args], engine.dirs.root)
        assert (code, out, err.replace(name.encode(), b"NAME")) == expected, err
    assert engine.store.exists("n2") == ("--keep" in args)


async def test_a_refused_cell_is_the_python_paths_line(api: Api, engine: Engine,
                                                       client_dir: Path) -> None:
    await api.client.post("/v1/machines", json={"name": "taken"})
    for template in ([], ["--template", "nope"]):
        args = ["run", "--name", "taken" if not template else "fresh", *template, "--", "true"]
        ours = await run([*native(client_dir), *args], engine.dirs.root)
        pythons = await run([*PYTHON_PATH, *args], engine.dirs.root)
        assert ours == pythons
        assert ours[0] == 1 and ours[2].startswith(b"boxui: ") and ours[2].count(b"\n") == 1
    assert cell_verbs(engine) == []


async def test_ctrl_c_cancels_the_cell_and_waits_for_its_end(
        api: Api, engine: Engine, runner: GatedRunner, client_dir: Path) -> None:
    proc = await start([*native(client_dir), "run", "--name", "stopme", "--", "hold", "c"],
                       engine.dirs.root)
    async with asyncio.timeout(20):
        await runner.entered["c"].wait()
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out, err) == (
        130, b"", b"boxui: cell stopme cancelled; its machine was destroyed\n")
    assert cell_verbs(engine) == [CellVerb.STARTED, CellVerb.MATERIALIZED,
                                  CellVerb.COMMAND_FAILED, CellVerb.DESTROYED]
    assert not engine.store.exists("stopme")


async def test_a_killed_client_cancels_its_cell(api: Api, engine: Engine,
                                                runner: GatedRunner, client_dir: Path) -> None:
    proc = await start([*native(client_dir), "run", "--name", "gone", "--", "hold", "g"],
                       engine.dirs.root)
    async with asyncio.timeout(30):
        await runner.entered["g"].wait()
        proc.kill()
        await proc.wait()
        while cell_verbs(engine)[-1:] != [CellVerb.DESTROYED]:
            await asyncio.sleep(0.05)
    [cell] = (await api.client.get("/v1/cells")).json()
    assert (cell["outcome"], cell["stage"]) == ("cancelled", "destroyed")
    assert not engine.store.exists("gone")


@pytest.mark.parametrize("args", [
    ["run"], ["run", "--help"], ["run", "--"], ["run", "--keep"],
    ["run", "--template", "Bad", "--", "true"], ["run", "--template", "a:b:c", "true"],
    ["run", "--template", "a", "--image", "b", "--", "true"],
    ["run", "--name", "Bad", "true"], ["run", "--name"], ["run", "--name", "--keep", "true"],
    ["run", "--timeout", "0", "true"], ["run", "--timeout", "nan", "true"],
    ["run", "--timeout", "0x10", "true"], ["run", "--timeout=", "true"],
    ["run", "--env", "1A=b", "true"], ["run", "--env", "A", "true"],
    ["run", "--input", "/nonexistent/in:/x", "true"], ["run", "--input", "in.txt", "true"],
    ["run", "--input", "//in.txt:/x", "true"], ["run", "--input=/etc/hostname:/x/", "true"],
    ["run", "--export", "rel", "true"], ["run", "--export", "/x:/nonexistent", "true"],
    ["run", "--keep=1", "true"], ["run", "--bogus", "true"], ["run", "-k", "true"],
])
async def test_what_it_is_not_sure_of_goes_to_python_untouched(
        api: Api, engine: Engine, client_dir: Path, args: list[str]) -> None:
    """With a daemon answering: only the parse decides (the shim echoes its argv)."""
    code, out, err = await run([*native(client_dir), *args], engine.dirs.root)
    assert (code, err) == (0, b""), err
    assert json.loads(out) == args
    assert cell_verbs(engine) == []


async def test_a_daemon_gone_mid_cell_is_one_line(engine: Engine, client_dir: Path) -> None:
    async with await serve_exec_socket_once(engine, frame(b"i", b"0" * 32)
                                            + frame(b"s", b"cell c: starting")):
        code, out, err = await run([*native(client_dir), "run", "--", "true"],
                                   engine.dirs.root)
    assert (code, out) == (1, b"")
    assert err.startswith(b"boxui: the boxui daemon on ") and b"broke off the cell" in err
    assert err.count(b"\n") == 1


@pytest.mark.parametrize("strings", [
    [b"bogus", b"x", b"--", b"true"],
    [b"name", b"c1"],  # no command
    [b"input", b"/etc/hostname", b"--", b"true"],  # a value short
    [b"env", b"A", b"--", b"true"],
])
async def test_a_bad_run_request_is_answered_with_one_error(api: Api, engine: Engine,
                                                            strings: list[bytes]) -> None:
    request = b"BXR1" + len(strings).to_bytes(4, "big") + b"".join(
        len(s).to_bytes(4, "big") + s for s in strings)
    answer = await asyncio.to_thread(_exchange, engine.dirs.exec_socket, request)
    assert answer[:1] == b"!"
    size = int.from_bytes(answer[1:5], "big")
    assert answer[5:5 + size].startswith(b"the boxui daemon cannot read the request")
    assert len(answer) == 5 + size
    assert cell_verbs(engine) == []


async def test_an_exec_traced_phase_by_phase(api: Api, engine: Engine, client_dir: Path,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """BOXUI_EXEC_TRACE: the daemon's line (its phases in order) and the client's, on one
    clock, the client's around the daemon's."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setattr("backend.supervision.exec_trace._PATH", str(trace))
    await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "vm"})
    proc = await asyncio.create_subprocess_exec(
        *native(client_dir), "exec", "vm", "--", "true", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BOXUI_HOME": str(engine.dirs.root), "BOXUI_EXEC_TRACE": "1"})
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    fields = {key: value for key, _, value in (
        part.partition("=") for part in err.decode().removeprefix("boxui-trace: ")
        .replace("first frame", "first_frame").split())}
    assert list(fields) == ["start_ns", "connected", "sent", "first_frame", "end"]
    async with asyncio.timeout(10):  # the daemon's line comes after the answer
        while not trace.exists() or not trace.read_text().endswith("\n"):
            await asyncio.sleep(0.02)
    [line] = [json.loads(text) for text in trace.read_text().splitlines()]
    labels = [label for label, _ in line["phases"]]
    for earlier, later in [("request read", "pending written"),
                           ("pending written", "dispatched written"),
                           ("dispatched written", "command ended"),
                           ("command ended", "bookkeeping done"),
                           ("bookkeeping done", "answered"), ("answered", "drained")]:
        assert labels.index(earlier) < labels.index(later), labels
    assert {"busy: marked", "dispatched synced", "idle marked"} <= set(labels)
    client_start = int(fields["start_ns"])
    assert client_start < line["start_ns"] < client_start + float(fields["end"]) * 1e6
