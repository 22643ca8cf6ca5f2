"""What the API's handlers act on: the one running supervisor and its companions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import Request

from backend.cells.service import CellService
from backend.images.builder import BuildTools
from backend.pools.manager import PoolManager
from backend.services.manager import ServiceManager
from backend.state.engine import Engine
from backend.supervision.machine_exec import MachineExec
from backend.supervision.provisioning import Provisioner
from backend.supervision.supervisor import Supervisor


@dataclass
class ApiContext:
    supervisor: Supervisor
    exec: MachineExec
    services: ServiceManager
    started: float = field(default_factory=time.monotonic)
    #: set when the server shuts down, so endless streams end at once
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    #: requests being answered now (an event stream counts until it ends): a daemon
    #: that exits when idle must not leave while a client waits on it
    open_requests: int = 0
    #: set whenever a request starts or ends, for whoever waits for the API to go quiet
    activity: asyncio.Event = field(default_factory=asyncio.Event)
    #: what image builds run (None: the real tools; tests give stand-ins)
    image_tools: BuildTools | None = None
    #: runs machines' provision scripts (None: provisioning is off, as in some tests)
    provisioner: Provisioner | None = None

    #: `boxui run`'s cells, made with the context so that every supervisor serving the
    #: API has them (and finishes what a dead one left: `cells.recover`)
    cells: CellService = field(init=False)
    #: warm pools: started with the services (`pools.start`), claimed by every start
    pools: PoolManager = field(init=False)

    def __post_init__(self) -> None:
        self.cells = CellService(self.supervisor, self.exec)
        self.pools = PoolManager(self.supervisor, ssh=self.exec.pool)

    @property
    def engine(self) -> Engine:
        return self.supervisor.engine


def context(request: Request) -> ApiContext:
    """FastAPI dependency: the context the app was built with."""
    ctx = request.app.state.context
    if ctx is None:
        raise RuntimeError("the API is not attached to a running supervisor")
    assert isinstance(ctx, ApiContext)
    return ctx
