"""A real API server on a unix socket, over the fake driver, for in-process tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from backend.api.context import ApiContext
from backend.api.server import serve_api
from backend.drivers.qemu.accel import AccelChoice
from backend.services.manager import ServiceManager
from backend.state.engine import Engine
from backend.supervision.crash_recovery import recover_machines
from backend.supervision.machine_exec import ExecRunner, MachineExec
from backend.supervision.provisioning import ScriptRunner, start_provisioning
from backend.supervision.supervisor import Supervisor
from tests.fake_driver import FakeBootFiles, FakeDriver


def fake_supervisor(engine: Engine, driver: FakeDriver) -> Supervisor:
    return Supervisor(engine, driver, FakeBootFiles(),
                      accel_for=lambda requested: AccelChoice(accel="tcg", reason="test"))


def api_context(sup: Supervisor, runner: ExecRunner,
                script_runner: ScriptRunner | None = None) -> ApiContext:
    machine_exec = MachineExec(sup.engine, runner)
    return ApiContext(sup, machine_exec, ServiceManager(sup, machine_exec),
                      provisioner=start_provisioning(sup, machine_exec.pool, script_runner))


@dataclass
class Api:
    client: httpx.AsyncClient
    ctx: ApiContext
    driver: FakeDriver


def uds_client(engine: Engine, timeout: float = 30) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(engine.dirs.api_socket))
    return httpx.AsyncClient(transport=transport, base_url="http://boxui", timeout=timeout)


@asynccontextmanager
async def running_api(engine: Engine, driver: FakeDriver, runner: ExecRunner,
                      script_runner: ScriptRunner | None = None) -> AsyncIterator[Api]:
    async with fake_supervisor(engine, driver).running(recover=recover_machines) as sup:
        ctx = api_context(sup, runner, script_runner)
        await ctx.services.start()
        stop = asyncio.Event()
        listening = asyncio.Event()
        server = asyncio.create_task(serve_api(ctx, stop, listening))
        await asyncio.wait({server, asyncio.ensure_future(listening.wait())},
                           timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()
        assert listening.is_set(), "the API did not listen within 30 s"
        try:
            async with uds_client(engine) as client:
                yield Api(client, ctx, driver)
        finally:
            stop.set()
            await server


class EventStream:
    """Reads an NDJSON event stream line by line."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                line = await anext(self._lines)
                if line.strip():
                    return dict(json.loads(line))

    async def until(self, predicate: Any) -> list[dict[str, Any]]:
        """Every event up to and including the first that matches `predicate`."""
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if predicate(event):
                return seen
