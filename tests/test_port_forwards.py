"""Port forwards on any machine, through the API over the stand-in driver: added and
removed on a running machine with no restart and kept in its spec, a host port in use
refused with nothing changed, forwards restored at the next start and kept by a
re-adopted hypervisor, and the events that record each change."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.drivers.errors import PortInUseError
from backend.drivers.qemu.cmdline import build_argv
from backend.state.engine import Engine
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec
from backend.state.port_mapping import PortMapping
from backend.supervision.ports import pick_free_port
from tests.api_helpers import Api, running_api
from tests.conftest import spec
from tests.fake_driver import FakeDriver
from tests.fake_exec import GatedRunner
from tests.guest.test_qemu_cmdline import config
from tests.test_api_machines import error_of
from tests.test_cli import run


def test_mappings_parse_with_their_protocol() -> None:
    udp = PortMapping.parse("5353:53/udp")
    assert (udp.host, udp.guest, udp.protocol, udp.key, str(udp)) == \
        (5353, 53, "udp", "53/udp", "5353:53/udp")
    tcp = PortMapping.parse("80/tcp")
    assert (tcp.host, tcp.protocol, tcp.key, str(tcp)) == (None, "tcp", "80", "80")
    for bad in ("80/sctp", "x", "1000:80", "0", "80:"):
        with pytest.raises(ValueError, match="use \\[HOST:\\]GUEST\\[/udp\\]"):
            PortMapping.parse(bad)
    # one forward per guest port, and per fixed host port, of each protocol
    MachineSpec(name="a", ports=[PortMapping.parse("53"), PortMapping.parse("53/udp")])
    with pytest.raises(ValueError, match="guest port 80 is forwarded twice"):
        spec("a", ports=[{"guest": 80}, {"guest": 80, "host": 8080}])
    with pytest.raises(ValueError, match="host port 8080/tcp is used twice"):
        spec("a", ports=[{"guest": 80, "host": 8080}, {"guest": 81, "host": 8080}])


def test_udp_forwards_reach_the_qemu_command_line(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, ssh_port=40123, port_forwards=((40200, 80),),
                             udp_forwards=((40300, 53),)))
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == ("user,id=n0,hostfwd=tcp:127.0.0.1:40123-:22,"
                      "hostfwd=tcp:127.0.0.1:40200-:80,hostfwd=udp:127.0.0.1:40300-:53")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A host port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def _recent(api: Api, kind: str) -> list[dict[str, Any]]:
    events = (await api.client.get("/v1/events/recent", params={"machine": "m"})).json()
    return [e for e in events if e["type"] == f"dev.boxui.port.v1.{kind}"]


async def test_a_running_machine_gains_and_loses_a_forward_without_a_restart(
        api: Api, engine: Engine) -> None:
    c = api.client
    r = await c.post("/v1/machines", params={"start": "true"},
                     json={"name": "m", "ports": [{"guest": 80}]})
    assert r.status_code == 201, r.text
    first = engine.store.load_record("m").ports["80"]
    assert api.driver.forwards("m") == {("tcp", first): 80}
    host = pick_free_port({first})
    r = await c.post("/v1/machines/m/ports", json={"guest": 22, "host": host})
    assert r.status_code == 201, r.text
    assert r.json() == {"guest": 22, "protocol": "tcp", "host": host, "live_host": host}
    assert api.driver.forwards("m") == {("tcp", first): 80, ("tcp", host): 22}
    assert engine.store.load_record("m").ports == {"80": first, "22": host}
    assert [str(p) for p in engine.store.load_spec("m").ports] == ["80", f"{host}:22"]
    assert api.driver.starts["m"] == 1  # no restart
    # no HOST: one is picked, shown, and forwarded now
    r = await c.post("/v1/machines/m/ports", json={"guest": 53, "protocol": "udp"})
    picked = r.json()["live_host"]
    assert r.status_code == 201 and isinstance(picked, int)
    assert api.driver.forwards("m")[("udp", picked)] == 53
    listed = (await c.get("/v1/machines/m/ports")).json()
    assert [(v["guest"], v["protocol"], v["live_host"]) for v in listed] == \
        [(80, "tcp", first), (22, "tcp", host), (53, "udp", picked)]
    added = await _recent(api, "added")
    assert [e["data"]["guest"] for e in added] == [22, 53]
    assert added[0]["data"]["message"] == f"forward 127.0.0.1:{host} -> guest 22/tcp added"

    r = await c.delete("/v1/machines/m/ports/22")
    assert r.status_code == 200 and r.json()["live_host"] == host
    assert ("tcp", host) not in api.driver.forwards("m")
    assert "22" not in engine.store.load_record("m").ports
    assert [p.key for p in engine.store.load_spec("m").ports] == ["80", "53/udp"]
    r = await c.delete("/v1/machines/m/ports/22")
    assert error_of(r) == (404, "no_such_forward")
    assert (await c.delete("/v1/machines/m/ports/53", params={"protocol": "udp"})
            ).status_code == 200
    assert api.driver.forwards("m") == {("tcp", first): 80}
    assert [e["data"]["guest"] for e in await _recent(api, "removed")] == [22, 53]
    assert api.driver.starts["m"] == 1


async def test_a_host_port_in_use_is_refused_and_changes_nothing(
        api: Api, engine: Engine, held_port: int) -> None:
    c = api.client
    await c.post("/v1/machines", params={"start": "true"}, json={"name": "m"})
    await c.post("/v1/machines", params={"start": "true"}, json={"name": "other"})
    before = (engine.store.load_spec("m"), engine.store.load_record("m").ports,
              api.driver.forwards("m"))
    r = await c.post("/v1/machines/m/ports", json={"guest": 80, "host": held_port})
    assert error_of(r) == (409, "port_in_use")
    assert r.json()["message"] == (f"host port 127.0.0.1:{held_port}/tcp is in use by "
                                   "another program; m's forwards are unchanged")
    other_ssh = engine.store.load_record("other").ssh_port
    r = await c.post("/v1/machines/m/ports", json={"guest": 80, "host": other_ssh})
    assert error_of(r) == (409, "port_in_use") and "machine other's SSH forward" in r.text
    r = await c.post("/v1/machines/m/ports", json={"guest": 22})
    assert r.status_code == 201
    r = await c.post("/v1/machines/m/ports", json={"guest": 22})
    assert error_of(r) == (409, "forward_exists")
    r = await c.delete("/v1/machines/m/ports/22")
    assert r.status_code == 200
    assert (engine.store.load_spec("m"), engine.store.load_record("m").ports,
            api.driver.forwards("m")) == before
    assert await _recent(api, "added") != [] and len(await _recent(api, "added")) == 1


async def test_the_hypervisors_own_refusal_is_reported_and_changes_nothing(
        api: Api, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    c = api.client
    await c.post("/v1/machines", params={"start": "true"}, json={"name": "m"})

    async def refuse(*_: object) -> None:
        raise PortInUseError("QEMU refused to forward 127.0.0.1:4000/tcp to guest port 80: "
                             "Could not set up host forwarding rule")

    monkeypatch.setattr(api.driver, "add_forward", refuse)
    r = await c.post("/v1/machines/m/ports", json={"guest": 80})
    assert error_of(r) == (409, "port_in_use") and "QEMU refused" in r.text
    assert engine.store.load_spec("m").ports == []
    assert engine.store.load_record("m").ports == {}
    assert await _recent(api, "added") == []


async def test_forwards_of_a_stopped_machine_apply_at_its_next_start(
        api: Api, engine: Engine) -> None:
    c = api.client
    await c.post("/v1/machines", json={"name": "m"})
    host = pick_free_port()
    r = await c.post("/v1/machines/m/ports", json={"guest": 8000, "host": host})
    assert r.json() == {"guest": 8000, "protocol": "tcp", "host": host, "live_host": None}
    assert (await _recent(api, "added"))[0]["data"]["message"] == \
        f"forward 127.0.0.1:{host} -> guest 8000/tcp added (from its next start)"
    assert api.driver.starts.get("m") is None
    assert (await c.post("/v1/machines/m/start")).status_code == 200
    assert api.driver.forwards("m") == {("tcp", host): 8000}
    assert engine.store.load_record("m").ports == {"8000": host}


async def test_a_readopted_machine_keeps_its_live_forwards(
        engine: Engine, driver: FakeDriver, runner: GatedRunner) -> None:
    async with running_api(engine, driver, runner) as api:
        await api.client.post("/v1/machines", params={"start": "true"}, json={"name": "m"})
        r = await api.client.post("/v1/machines/m/ports", json={"guest": 80})
        live = r.json()["live_host"]
    # the supervisor went away, the machine ran on; the next one re-adopts it
    async with running_api(engine, driver, runner) as api:
        assert engine.projection.state_of("m") is InstanceState.READY
        listed = (await api.client.get("/v1/machines/m/ports")).json()
        assert listed == [{"guest": 80, "protocol": "tcp", "host": None, "live_host": live}]
        r = await api.client.delete("/v1/machines/m/ports/80")
        assert r.status_code == 200 and r.json()["live_host"] == live
        await api.client.post("/v1/machines/m/stop", params={"force": "true"})


def test_port_commands_refuse_bad_input_before_any_daemon(home: Path) -> None:
    for args in (["port", "add", "m", "80/sctp"], ["port", "add", "m", "0"],
                 ["create", "m", "--port", "99999"],
                 ["create", "m", "--port", "80", "--port", "8080:80"]):
        out = run(home, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (home / "run" / "api.sock").exists()
    out = run(home, "port", "ls", "nope")
    assert out.returncode == 1 and out.stderr.startswith("boxui: ")
