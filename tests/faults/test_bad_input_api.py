"""Item 10 for the API: every endpoint (taken from the OpenAPI document, so a new one
cannot be forgotten) given bad names in its path, query or body, bad numbers, wrong types
and missing fields answers a 4xx with a JSON `{code, message}` (a one-line message),
never a 5xx; nothing on disk changes and nothing is created outside the state dir.

An empty name (or ".") in a path is not sent: `/v1/machines/` is another resource (the
list), not a machine with an empty name, and clients normalise dot segments away; those
names are sent in queries and bodies instead."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from backend.api.app import openapi_document
from backend.state.engine import Engine
from tests.api_helpers import Api, running_api
from tests.conftest import spec
from tests.fake_driver import FakeDriver
from tests.fake_exec import GatedRunner
from tests.faults.conftest import FaultRecorder

BAD_NAMES = ["../x", "a/b", "-rf", "x" * 300, "a\0b", "héllo", "UPPER", "a b"]
BAD_NUMBERS: list[Any] = [0, -1, 10**30, "x", None, 1.5]
BAD_COUNTS: list[Any] = [-1, 10**30, "x", None, 1.5]  # 0 replicas is a valid count

#: (method, path template) -> requests as (path params, query, json body)
Request = tuple[dict[str, str], dict[str, Any], Any]


def _name_cases() -> list[Request]:
    return [({"name": n}, {}, None) for n in BAD_NAMES]


def _query(key: str, values: list[Any]) -> list[Request]:
    return [({}, {key: v}, None) for v in values]


MACHINE = {"name": "ok", "vcpus": 1, "memory_mib": 256}
CELL = {"argv": ["true"]}
SERVICE = {"name": "svc", "replicas": 1}
CASES: dict[tuple[str, str], list[Request]] = {
    ("GET", "/v1/events"): _query("machine", [*BAD_NAMES, "", "."]),
    ("GET", "/v1/commands"): _query("machine", [*BAD_NAMES, "", "."]),
    ("GET", "/v1/events/recent"): [*_query("machine", [*BAD_NAMES, "", "."]),
                                   *_query("limit", [0, -1, 10**30, "x"])],
    ("GET", "/v1/health"): [],
    ("GET", "/v1/health/latest"): [],
    ("GET", "/v1/health/samples"): _query("machine", [*BAD_NAMES, "", "."]),
    ("GET", "/v1/machines"): [],
    ("GET", "/v1/orphans"): [],
    ("POST", "/v1/orphans/gc"): _query("dry_run", ["maybe", "", "2"]),
    ("POST", "/v1/machines"): [
        *(({}, {}, {**MACHINE, "name": n}) for n in [*BAD_NAMES, "", "."]),
        *(({}, {}, {**MACHINE, "vcpus": v}) for v in BAD_NUMBERS),
        *(({}, {}, {**MACHINE, "memory_mib": v}) for v in BAD_NUMBERS),
        ({}, {}, {"vcpus": 1}), ({}, {}, {**MACHINE, "bogus": 1}), ({}, {}, "not json"),
        ({}, {}, [MACHINE]), ({}, {"start": "maybe"}, MACHINE),
        *(({}, {}, {**MACHINE, "stop": v}) for v in ({"acpi_timeout": 0}, {"bogus": 1},
                                                      {"sigkill_timeout": 10**6}, 5)),
        ({}, {}, {**MACHINE, "kernel": "/nonexistent/vmlinuz",
                  "initrd": "/nonexistent/initrd"}),
        *(({}, {}, {**MACHINE, "image": i}) for i in ("no-such", "../x", "")),
        *(({}, {}, {**MACHINE, "image": "no-such", "disk": d}) for d in ("20X", "", 5)),
        ({}, {}, {**MACHINE, "disk": "20G"}),
        *(({}, {}, {**MACHINE, "provision": p}) for p in (["x.sh"], ["/nonexistent/x.sh"],
                                                          ["/"], ["/dev/zero"], "/x.sh", [1],
                                                          ["/a"] * 33)),
    ],
    ("DELETE", "/v1/machines/{name}"): [*_name_cases(), ({"name": "ok"}, {"force": "x"}, None)],
    ("GET", "/v1/machines/{name}"): _name_cases(),
    ("GET", "/v1/machines/{name}/commands"): _name_cases(),
    ("POST", "/v1/machines/{name}/exec"): [
        *(({"name": n}, {}, {"argv": ["true"]}) for n in BAD_NAMES),
        ({"name": "ok"}, {}, {"argv": []}), ({"name": "ok"}, {}, {"argv": "true"}),
        ({"name": "ok"}, {}, {}), ({"name": "ok"}, {}, {"argv": [1]}),
        *(({"name": "ok"}, {}, {"argv": ["true"], "timeout": t}) for t in (0, -1, 10**30)),
        *(({"name": "ok"}, {}, {"argv": ["true"], "idempotent": True, "max_attempts": n})
          for n in BAD_NUMBERS if n not in (None,)),
        ({"name": "ok"}, {}, {"argv": ["true"], "idempotent": "maybe"}),
    ],
    ("GET", "/v1/machines/{name}/disk"): [*_name_cases(), ({"name": "ok"}, {}, None)],
    ("POST", "/v1/machines/{name}/disk/resize"): [
        *(({"name": n}, {}, {"size": "2G"}) for n in BAD_NAMES),
        *(({"name": "ok"}, {}, {"size": s}) for s in ("", "20X", "0", "-1G", "99999T", 5)),
        ({"name": "ok"}, {}, {}), ({"name": "ok"}, {}, {"size": "2G", "bogus": 1}),
        ({"name": "ok"}, {}, {"size": "2G"}),  # "ok" has no disk: refused, not made
    ],
    ("GET", "/v1/machines/{name}/ports"): [*_name_cases(), ({"name": "ghost"}, {}, None)],
    ("POST", "/v1/machines/{name}/ports"): [
        *(({"name": n}, {}, {"guest": 80}) for n in BAD_NAMES),
        ({"name": "ghost"}, {}, {"guest": 80}),
        *(({"name": "ok"}, {}, {"guest": g}) for g in BAD_NUMBERS),
        *(({"name": "ok"}, {}, {"guest": 80, "host": h}) for h in [0, -1, 10**30, "x", 1.5, 80]),
        ({"name": "ok"}, {}, {"guest": 80, "protocol": "sctp"}), ({"name": "ok"}, {}, {}),
        ({"name": "ok"}, {}, {"guest": 80, "bogus": 1}), ({"name": "ok"}, {}, "not json"),
        ({"name": "ok"}, {}, [{"guest": 80}]),
    ],
    ("DELETE", "/v1/machines/{name}/ports/{guest}"): [
        *(({"name": n, "guest": "80"}, {}, None) for n in BAD_NAMES),
        *(({"name": "ok", "guest": g}, {}, None) for g in ("0", "-1", "x", "99999", "1.5")),
        ({"name": "ok", "guest": "80"}, {"protocol": "sctp"}, None),
        ({"name": "ok", "guest": "80"}, {}, None),  # not forwarded: nothing to remove
        ({"name": "ghost", "guest": "80"}, {}, None),
    ],
    ("POST", "/v1/machines/{name}/provision"): [*_name_cases(), ({"name": "ok"}, {}, None),
                                                ({"name": "ghost"}, {}, None)],
    ("POST", "/v1/machines/{name}/restart"): _name_cases(),
    ("POST", "/v1/machines/{name}/start"): _name_cases(),
    ("POST", "/v1/machines/{name}/stop"): [*_name_cases(),
                                           ({"name": "ok"}, {"force": "x"}, None)],
    ("POST", "/v1/scale"): [
        *(({}, {}, {"service": n, "replicas": 1}) for n in [*BAD_NAMES, "", "."]),
        *(({}, {}, {"service": "svc", "replicas": v}) for v in BAD_COUNTS),
        ({}, {}, {"replicas": 1}), ({}, {"wait": "x"}, {"service": "svc", "replicas": 1}),
    ],
    ("GET", "/v1/services"): [],
    ("POST", "/v1/services"): [
        *(({}, {}, {**SERVICE, "name": n}) for n in [*BAD_NAMES, "", "."]),
        *(({}, {}, {**SERVICE, "replicas": v}) for v in BAD_COUNTS),
        *(({}, {}, {**SERVICE, key: v}) for key in ("max_replicas", "vcpus", "memory_mib")
          for v in BAD_NUMBERS),
        ({}, {}, {**SERVICE, "ports": [{"guest": 0}]}),
        ({}, {}, {**SERVICE, "env": {"1X": "y"}}),
        ({}, {}, {**SERVICE, "template": "../x"}),
        ({}, {}, {**SERVICE, "drain_timeout": -1}), ({}, {}, {"replicas": 1}),
    ],
    ("POST", "/v1/templates/builds"): [
        *(({}, {}, {"template_id": n}) for n in [*BAD_NAMES, "", ".", "no-such"]),
        *(({}, {}, {"text": t, "file_name": "t.toml"}) for t in [
            "", "template_id = [", 'template_id = "../x"\n[[variants]]\nrole = "w"\n',
            'template_id = "t"\n', 'template_id = "t"\n[[variants]]\nrole = "w"\nx = 1\n',
            'schema_version = 9\ntemplate_id = "t"\n[[variants]]\nrole = "w"\n',
            "\0\n" * 3]),
        ({}, {}, {"text": 'template_id = "t"\n', "file_name": "a\nb"}),
        ({}, {}, {"template_id": "t", "text": ""}), ({}, {}, {"snapshot": True}),
        ({}, {}, {"template_id": "t", "snapshot": "x"}), ({}, {}, {"template_id": 1}),
        ({}, {}, "not json"), ({}, {}, ["t"]),
    ],
    ("DELETE", "/v1/services/{name}"): _name_cases(),
    ("GET", "/v1/services/{name}"): _name_cases(),
    ("GET", "/v1/images"): [],
    ("POST", "/v1/images/builds"): [
        *(({}, {}, {"name": n}) for n in [*BAD_NAMES, "", ".", "no-such"]),
        ({}, {}, {}), ({}, {}, {"name": 1}), ({}, {}, {"name": "debian-12", "x": 1}),
        ({}, {}, "not json"), ({}, {}, ["debian-12"]),
    ],
    ("GET", "/v1/cells"): [],
    ("POST", "/v1/cells"): [
        *(({}, {}, {**CELL, "name": n}) for n in [*BAD_NAMES, "", ".", "ok"]),
        *(({}, {}, {**CELL, "argv": a}) for a in ([], "true", [1], None)),
        *(({}, {}, {**CELL, "timeout": t}) for t in (0, -1, "x")),
        *(({}, {}, {**CELL, key: v}) for key, v in (
            ("env", {"1X": "y"}), ("env", ["K=V"]), ("template", "../x"),
            ("template", "no-such"), ("image", "no-such"), ("image", "../x"),
            ("inputs", [{"host_path": "/nonexistent", "guest_path": "/x"}]),
            ("inputs", [{"host_path": "/dev/null", "guest_path": "rel"}]),
            ("exports", [{"guest_path": "/x", "host_dir": "/nonexistent"}]),
            ("exports", [{"guest_path": "/x/", "host_dir": "/tmp"}]), ("keep", "maybe"))),
        ({}, {}, {**CELL, "template": "t", "image": "i"}), ({}, {}, {}),
        ({}, {}, "not json"), ({}, {}, [CELL]),
    ],
    ("POST", "/v1/cells/{cell_id}/cancel"): [({"cell_id": c}, {}, None)
                                             for c in ("no-such", *BAD_NAMES)],
    ("DELETE", "/v1/images/{name}"): [*_name_cases(), ({"name": "no-such"}, {}, None),
                                      ({"name": "default"}, {}, None)],
    ("GET", "/v1/pools"): [],
    ("PUT", "/v1/pools/{ref}"): [
        *(({"ref": r}, {}, {"size": 1}) for r in [*BAD_NAMES, "no-such", "no-such:x",
                                                   "ok:../x", ":", "a:b:c"]),
        *(({"ref": "no-such"}, {}, body) for body in (
            {"size": -1}, {"size": 33}, {"size": "x"}, {"size": None}, {}, {"size": 1, "x": 1},
            "not json", [1])),
    ],
}


def state_of(home: Path) -> dict[str, str]:
    """Every file under the state dir with a hash of its content (sockets by name only)."""
    found = {}
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.is_socket():
            found[str(path.relative_to(home))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[Api]:
    driver = FakeDriver()
    await engine.create_machine(spec("ok"))
    try:
        async with running_api(engine, driver, GatedRunner()) as running:
            yield running
    finally:
        driver.kill_all()


@pytest.mark.fault("10. bad input to every API endpoint")
async def test_every_endpoint_rejects_bad_input(api: Api, home: Path, tmp_path: Path,
                                                fault: FaultRecorder,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    document = openapi_document()
    endpoints = {(method.upper(), path) for path, ops in document["paths"].items()
                 for method in ops}
    assert endpoints == set(CASES), "an API endpoint is missing from the bad-input table"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = state_of(home)
    problems = []
    for (method, template), requests in CASES.items():
        for params, query, body in requests:
            path = template.format(**{k: quote(v, safe="") for k, v in params.items()})
            kwargs: dict[str, Any] = {"params": query}
            if isinstance(body, str):
                kwargs["content"] = body
                kwargs["headers"] = {"content-type": "application/json"}
            elif body is not None:
                kwargs["json"] = body
            response = await api.client.request(method, path, **kwargs)
            fault.cycle()
            where = f"{method} {path} {query} {str(body)[:60]}"
            if not 400 <= response.status_code < 500:
                problems.append(f"{where}: {response.status_code} {response.text[:200]}")
                continue
            try:
                answer = response.json()
                code, message = answer["code"], answer["message"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{where}: not a {{code, message}} body: {response.text[:200]}")
                continue
            if not code or not message or "\n" in str(message) or "Traceback" in str(message):
                problems.append(f"{where}: message {message!r}")
    assert problems == [], "\n".join(problems)
    assert state_of(home) == before, "a rejected request changed the state dir"
    assert os.listdir(cwd) == [], "something was created outside the state dir"
