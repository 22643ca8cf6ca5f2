"""`boxui demo --script FILE.toml`: a lifecycle acted out step by step, for talks.

A script is a list of steps (create, start, stop, restart, delete, crash, recover,
service, scale, wait, say) validated as a whole before anything runs, so a typo is
reported naming the step and the field, not discovered halfway through a talk. The
`ScriptDirector` plays it through the same engine, supervisor and service manager the
rest of boxui uses, on stand-in processes or (`--real`) on real QEMU guests. A crash is
real either way: the machine's process gets SIGKILL, and the supervisor sees it die.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backend.errors import BoxuiError
from backend.services.manager import ServiceManager
from backend.services.scale_models import ScaleRequest
from backend.services.service_spec import MAX_REPLICAS, ServiceSpec
from backend.state.event_bus import Missed
from backend.state.lifecycle import ACTIVE_STATES, InstanceState
from backend.state.machine_spec import MachineSpec, RestartPolicy
from backend.state.names import validate_name
from boxui.tui.embedded import EmbeddedBackend

log = logging.getLogger("boxui.demo")

Names = Annotated[list[str], Field(min_length=1, max_length=32)]
RESTING = {InstanceState.STOPPED, InstanceState.FAILED, InstanceState.CRASHED}
SERVING = {InstanceState.READY, InstanceState.BUSY}


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_names(names: list[str]) -> list[str]:
    for name in names:
        try:
            validate_name(name)
        except BoxuiError as exc:
            raise ValueError(str(exc)) from None
    return names


class _Named(_Step):
    names: Names

    _valid_names = field_validator("names")(_check_names)


class Create(_Named):
    """Create machines (and start them, unless `start = false`)."""

    do: Literal["create"]
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=256, ge=64, le=65536)
    start: bool = True
    restart: RestartPolicy = "never"
    #: stand-ins only: how long the pretend guest takes to boot, or why it fails to
    boot_seconds: float | None = Field(default=None, gt=0, le=600)
    fail_boot: str | None = None


class Act(_Step):
    """start / stop / restart / delete, as the keys do; `crash` kills the process
    (SIGKILL); `recover` starts the ones that are stopped, failed or crashed. On `names`,
    or on one running instance of `service` (its names are made up as it scales)."""

    do: Literal["start", "stop", "restart", "delete", "crash", "recover"]
    names: list[str] = Field(default_factory=list, max_length=32)
    service: str | None = None

    _valid_names = field_validator("names")(_check_names)

    @model_validator(mode="after")
    def _one_target(self) -> Act:
        if bool(self.names) == (self.service is not None):
            raise ValueError("give names, or service (one of its running instances)")
        return self


class Service(_Step):
    do: Literal["service"]
    name: str
    replicas: int = Field(default=0, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(default=4, ge=1, le=MAX_REPLICAS)
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=256, ge=64, le=65536)


class Scale(_Step):
    do: Literal["scale"]
    service: str
    replicas: int = Field(ge=0, le=MAX_REPLICAS)


class Wait(_Step):
    """`seconds` of pause, or until `names` are all in state `until`, or until
    `service` has `replicas` instances ready; `timeout` bounds the latter two."""

    do: Literal["wait"]
    seconds: float | None = Field(default=None, gt=0, le=3600)
    until: InstanceState | None = None
    names: list[str] = Field(default_factory=list)
    service: str | None = None
    replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    timeout: float = Field(default=120, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_kind(self) -> Wait:
        by_state = self.until is not None and bool(self.names)
        by_service = self.service is not None and self.replicas is not None
        if [self.seconds is not None, by_state, by_service].count(True) != 1:
            raise ValueError("give exactly one of: seconds; until with names; "
                             "service with replicas")
        return self


class Say(_Step):
    """Show `text` as a notification (what the audience should look at now)."""

    do: Literal["say"]
    text: str = Field(min_length=1, max_length=500)
    seconds: float = Field(default=5, gt=0, le=120)


Step = Annotated[Create | Act | Service | Scale | Wait | Say, Field(discriminator="do")]


class DemoScript(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = ""
    #: start over when the last step is done (a talk's background loop)
    loop: bool = False
    steps: list[Step] = Field(min_length=1)


def load_script(path: Path) -> DemoScript:
    """Read and validate a script; an error names the step (1-based) and its field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BoxuiError(f"cannot read demo script {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BoxuiError(f"{path}: not valid TOML: {exc}") from None
    try:
        return DemoScript.model_validate(raw)
    except ValidationError as exc:
        raise BoxuiError(f"{path}: {describe(exc, raw)}") from None


def describe(exc: ValidationError, raw: object) -> str:
    """`step 3 (scale): replicas: Input should be ...` for the first error."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        index = loc[1]
        steps = raw.get("steps") if isinstance(raw, dict) else None
        kind = steps[index].get("do") if isinstance(steps, list) and index < len(steps) \
            and isinstance(steps[index], dict) else None
        rest = [str(p) for p in loc[2:] if p != kind]
        where = f"step {index + 1}" + (f" ({kind})" if kind else "")
        if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
            return f"{where}: do: must be one of create, start, stop, restart, delete, " \
                "crash, recover, service, scale, wait, say"
        return f"{where}: {'.'.join(rest) + ': ' if rest else ''}{message}"
    return f"{'.'.join(str(p) for p in loc) or 'script'}: {message}"


class ScriptDirector:
    """Plays a script, step by step. A step that meets reality (a machine not there, an
    illegal move because someone pressed a key) is noted and skipped, as the built-in
    story does; a wait that times out is noted too, and the script goes on."""

    def __init__(self, backend: EmbeddedBackend, script: DemoScript, *,
                 speed: float = 1.0, plan: Callable[[Create, str], None] | None = None,
                 say: Callable[[str, float], None] | None = None) -> None:
        self.backend = backend
        self.script = script
        self.speed = speed
        self.plan = plan  # stand-ins: tell the driver how this machine's guest behaves
        self.say = say or (lambda text, _seconds: log.info("demo: %s", text))
        self.skipped: list[BaseException] = []
        self.steps_done = 0

    async def run(self) -> None:
        await self.backend.ready.wait()
        while True:
            for number, step in enumerate(self.script.steps, start=1):
                try:
                    await self.play(step)
                except asyncio.CancelledError:
                    raise
                except (BoxuiError, TimeoutError) as exc:
                    log.info("demo step %d skipped: %s", number, exc)
                    self.skipped.append(exc)
                self.steps_done += 1
            if not self.script.loop:
                return

    async def play(self, step: Create | Act | Service | Scale | Wait | Say) -> None:
        match step:
            case Create():
                await self._create(step)
            case Act():
                names = step.names or [self._instance_of(step.service or "")]
                await self._each(names, self._acts()[step.do])
            case Service():
                await self._services().create(ServiceSpec(
                    name=step.name, replicas=step.replicas, max_replicas=step.max_replicas,
                    vcpus=step.vcpus, memory_mib=step.memory_mib))
            case Scale():
                response, _ = await self._services().scale(ScaleRequest(
                    service=step.service, replicas=step.replicas))
                if not response.accepted:
                    raise BoxuiError(response.error or "scale request refused")
            case Wait():
                await self._wait(step)
            case Say():
                self.say(step.text, step.seconds)

    async def _each(self, names: list[str], act: Callable[[str], Awaitable[None]]) -> None:
        results = await asyncio.gather(*(act(name) for name in names),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, BoxuiError):
                    raise result
                self.skipped.append(result)

    async def _create(self, step: Create) -> None:
        async def one(name: str) -> None:
            if self.plan is not None:
                self.plan(step, name)
            await self.backend.engine.create_machine(MachineSpec(
                name=name, vcpus=step.vcpus, memory_mib=step.memory_mib,
                restart=step.restart))
            if step.start:
                await self.backend.supervisor.start_machine(name)

        await self._each(step.names, one)

    def _instance_of(self, service: str) -> str:
        projection = self.backend.engine.projection
        running = sorted(name for name in self._services().instances(service)
                         if projection.state_of(name) in SERVING)
        if not running:
            raise BoxuiError(f"service {service} has no running instance")
        return running[0]

    def _acts(self) -> dict[str, Callable[[str], Awaitable[None]]]:
        return {"start": self._start, "stop": self._stop, "restart": self._restart,
                "delete": self._delete, "crash": self._crash, "recover": self._recover}

    async def _start(self, name: str) -> None:
        await self.backend.supervisor.start_machine(name)

    async def _stop(self, name: str) -> None:
        await self.backend.supervisor.stop_machine(name)

    async def _restart(self, name: str) -> None:
        await self.backend.supervisor.restart_machine(name)

    async def _delete(self, name: str) -> None:
        await self.backend.supervisor.delete_machine(name, force=True)

    async def _recover(self, name: str) -> None:
        if self.backend.engine.projection.state_of(name) in RESTING:
            await self.backend.supervisor.start_machine(name)

    async def _crash(self, name: str) -> None:
        """SIGKILL the machine's own process (the supervisor's live handle, never a pid
        read from disk that may since belong to another process)."""
        handle = self.backend.supervisor.handles.get(name)
        if handle is None or self.backend.engine.projection.state_of(name) not in \
                ACTIVE_STATES:
            raise BoxuiError(f"{name} is not running: nothing to crash")
        try:
            os.kill(handle.pid, signal.SIGKILL)
        except ProcessLookupError:
            raise BoxuiError(f"{name}'s process is gone already") from None

    def _services(self) -> ServiceManager:
        manager = self.backend.service_manager
        if manager is None:
            raise BoxuiError("services need the control API, which this demo does not serve")
        return manager

    async def _wait(self, step: Wait) -> None:
        if step.seconds is not None:
            await asyncio.sleep(step.seconds / self.speed)
            return
        subscription = self.backend.subscribe_events()
        try:
            async with asyncio.timeout(step.timeout):
                while not self._waited_for(step):
                    item = await subscription.get()
                    if isinstance(item, Missed):
                        continue
        except TimeoutError:
            raise TimeoutError(f"waited {step.timeout:g} s in vain for "
                               f"{self._wait_words(step)}") from None
        finally:
            subscription.close()

    def _waited_for(self, step: Wait) -> bool:
        projection = self.backend.engine.projection
        if step.until is not None:
            return all(projection.state_of(name) is step.until for name in step.names)
        manager = self._services()
        return manager.current_replicas(step.service or "") == step.replicas

    @staticmethod
    def _wait_words(step: Wait) -> str:
        if step.until is not None:
            return f"{', '.join(step.names)} to be {step.until.value}"
        return f"{step.service} to have {step.replicas} ready"
