"""Bodies of the API that are not already backend models (machines, specs, events and
commands travel as the backend's own pydantic models)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from backend.supervision.inflight_commands import CommandRecord

MAX_EXEC_TIMEOUT = 24 * 3600.0
MAX_ATTEMPTS = 10


class ExecRequest(BaseModel):
    argv: list[str] = Field(min_length=1, description="the command and its arguments")
    stdin_b64: str | None = Field(default=None, description="bytes for stdin, base64")
    timeout: float | None = Field(default=None, gt=0, le=MAX_EXEC_TIMEOUT,
                                  description="its deadline, in seconds: past it the "
                                              "command is killed in the guest (expired)")
    idempotent: bool = Field(default=False, description="safe to run again if the "
                             "supervisor dies while it runs")
    max_attempts: int = Field(default=1, ge=1, le=MAX_ATTEMPTS,
                              description="attempts at most, counting re-dispatches "
                                          "after a supervisor died (idempotent only)")


class ExecResponse(BaseModel):
    command: CommandRecord
    exit_code: int
    stdout_b64: str
    stderr_b64: str


class HealthReport(BaseModel):
    status: str = "ok"
    version: str
    pid: int
    state_dir: str
    uptime_seconds: float
    machines: int
    by_state: dict[str, int]
    services: int
    event_subscribers: int
    commands_in_flight: int
