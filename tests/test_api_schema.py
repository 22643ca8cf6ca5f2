"""schemathesis against the served OpenAPI document (the committed one, see
test_api_machines): generated requests, valid and invalid, over the fake driver. Bounded
by example counts, not time: no response may be a 5xx, break its schema, use an
undocumented status code or the wrong content type."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.api.app import create_app
from backend.state.engine import Engine
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.machine_exec import ExecOutput
from tests.api_helpers import api_context, fake_supervisor
from tests.fake_driver import FakeDriver

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]


async def echo_runner(engine: Engine, name: str, port: int, argv: list[str],
                      stdin: bytes | None, timeout: float | None) -> ExecOutput:
    """Generated commands are never run anywhere: they are echoed back."""
    return ExecOutput(0, " ".join(argv).encode(), b"")


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home: Path = tmp_path_factory.mktemp("schemathesis") / "home"
    driver = FakeDriver()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await Engine.open(home)
        try:
            async with fake_supervisor(engine, driver).running(recover=recover_machines) as sup:
                app.state.context = ctx = api_context(sup, echo_runner)
                await ctx.services.start()
                yield
        finally:
            await engine.close()

    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(lifespan=lifespan))
    asgi.shutdown_lifespans()
    driver.kill_all()


schema = schemathesis.pytest.from_fixture("api_schema")


# the endless NDJSON streams are tested on their own (test_api_machines, the app over a
# daemon); a fuzzer would wait on them forever. A cell writes its exports into host
# directories the request names (as root here, `/` would do): tested in test_cells_api
@schema.exclude(path="/v1/events").exclude(path="/v1/health/samples") \
    .exclude(method="POST", path="/v1/cells").parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
