"""`boxui service create/scale/ls/rm`: services of N identical instances.

Like machine commands, changes go through the daemon's API (`dispatch.call` starts one
when none runs); `service ls` reads the daemon's view when one runs, else the state dir.

The service manager, its models and the daemon client are imported inside the commands:
every `boxui` invocation imports this module, and `boxui ls` must not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from backend.errors import BoxuiError
from backend.state.machine_limits import MAX_MEMORY_MIB, MAX_SCALE_REQUEST, MAX_VCPUS
from boxui.cli.dispatch import call
from boxui.cli.output import emit_json, table
from boxui.cli.params import json_flag, template_ref

if TYPE_CHECKING:
    from backend.services.service_spec import ServiceSpec


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def _show(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(view)
        return
    spec = view["spec"]
    click.echo(f"{spec['name']}: {view['current_replicas']}/{spec['replicas']} ready "
               f"(max {spec['max_replicas']})")
    for inst in view["instances"]:
        click.echo(f"  {inst['id']:<24} {inst['state']:<9} {inst.get('endpoint') or ''}")


def _service_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from backend.services.service_spec import validate_service_name

    try:
        return validate_service_name(value)
    except BoxuiError as exc:
        raise click.BadParameter(str(exc).replace("machine name", "service name"),
                                 ctx=ctx, param=param) from None


service_name = click.argument("name", callback=_service_name)


@click.group("service")
def service_group() -> None:
    """Services: N identical machines kept at a desired count."""


@service_group.command("create")
@service_name
@click.option("--replicas", type=click.IntRange(0), default=1, show_default=True)
@click.option("--max", "max_replicas", type=click.IntRange(1), default=4,
              show_default=True, help="Scale requests above this are refused.")
@click.option("--template", "template_ref", metavar="ID[:ROLE]", callback=template_ref,
              help="Instances restore this template's snapshot (or cold-boot its image); "
              "vCPUs and memory default to its variant's.")
@click.option("--vcpus", type=click.IntRange(1, MAX_VCPUS), default=None,
              help="[default: 1, or the template variant's]")
@click.option("--memory", "memory_mib", type=click.IntRange(64, MAX_MEMORY_MIB),
              default=None,
              show_default=True, help="Memory in MiB per instance.")
@click.option("--env", "env", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--port", "ports", multiple=True,
              help="Publish a guest port: GUEST or HOST:GUEST (repeatable).")
@click.option("--drain-timeout", type=click.FloatRange(min=0, min_open=True),
              default=30.0, show_default=True,
              help="Seconds scale-down waits for in-flight commands.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Return once the instances are up.")
@json_flag
def create_cmd(name: str, replicas: int, max_replicas: int, template_ref: str | None,
               vcpus: int | None, memory_mib: int | None,
               env: tuple[str, ...], ports: tuple[str, ...], drain_timeout: float,
               wait: bool, as_json: bool) -> None:
    """Create a service and start its instances."""
    if template_ref is not None and (vcpus is None or memory_mib is None):
        vcpus, memory_mib = _template_size(name, template_ref, vcpus, memory_mib)
    spec = _service_spec(name, replicas, max_replicas, template_ref, vcpus or 1,
                         memory_mib or 256, env, ports, drain_timeout)
    view = call("POST", "/v1/services", json=spec.model_dump(mode="json"),
                params={"wait": wait})
    _show(view, as_json)


def _template_size(name: str, template_ref: str, vcpus: int | None,
                   memory_mib: int | None) -> tuple[int, int]:
    """vCPUs and memory not given on the command line come from the template's variant."""
    from backend.state.state_dir import open_state_dir
    from backend.templates.machine_from_template import spec_from_template

    try:
        variant = spec_from_template(open_state_dir(), name, template_ref)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return (variant.vcpus if vcpus is None else vcpus,
            variant.memory_mib if memory_mib is None else memory_mib)


def _service_spec(name: str, replicas: int, max_replicas: int, template_ref: str | None,
                  vcpus: int, memory_mib: int, env: tuple[str, ...], ports: tuple[str, ...],
                  drain_timeout: float) -> ServiceSpec:
    """The spec `service create` asks for; one that does not validate is a usage error."""
    from pydantic import ValidationError

    from backend.services.service_spec import ServiceSpec
    from backend.state.port_mapping import PortMapping
    from backend.state.validation_text import describe_validation_error

    try:
        mappings = [PortMapping.parse(p) for p in ports]
        return ServiceSpec(name=name, replicas=replicas, max_replicas=max_replicas,
                           template=template_ref, vcpus=vcpus, memory_mib=memory_mib,
                           env=_parse_env(env), ports=mappings, drain_timeout=drain_timeout)
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@service_group.command("scale")
@service_name
@click.argument("replicas", type=click.IntRange(0, MAX_SCALE_REQUEST))
@click.option("--request-id", default="", help="Echoed in the response.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@json_flag
def scale_cmd(name: str, replicas: int, request_id: str, wait: bool, as_json: bool) -> None:
    """Scale a service to REPLICAS instances (refused above its max)."""
    from backend.services.scale_models import ScaleRequest

    request = ScaleRequest(service=name, replicas=replicas, request_id=request_id)
    # a refusal (409) carries a ScaleResponse, not an error
    result = call("POST", "/v1/scale", json=request.model_dump(), params={"wait": wait},
                  also_ok=(409,))
    _show_scale(name, result, as_json)


def _show_scale(name: str, result: dict[str, Any], as_json: bool) -> None:
    """Print a scale response; a refused request exits 1."""
    if as_json:
        emit_json(result)
    if not result["accepted"]:
        if not as_json:
            click.echo(f"boxui: scale refused: {result['error']} "
                       f"(target {result['target_replicas']})", err=True)
        raise SystemExit(1)
    if not as_json:
        click.echo(f"{name}: {result['current_replicas']}/{result['target_replicas']} "
                   f"ready (request {result['request_id']})")


@service_group.command("ls")
@json_flag
def ls_cmd(as_json: bool) -> None:
    """List services with their desired and ready counts."""
    views = _views()
    if as_json:
        emit_json(views)
        return
    if not views:
        click.echo("no services yet")
        return
    rows = [[v["spec"]["name"], str(v["spec"]["replicas"]), str(v["current_replicas"]),
             str(v["spec"]["max_replicas"]), " ".join(i["id"] for i in v["instances"])]
            for v in views]
    click.echo(table(["NAME", "DESIRED", "READY", "MAX", "INSTANCES"], rows))


@service_group.command("rm")
@service_name
def rm_cmd(name: str) -> None:
    """Drain and delete every instance, then the service."""
    call("DELETE", f"/v1/services/{name}")
    click.echo(f"removed service {name}")


def _views() -> list[dict[str, Any]]:
    """From the daemon if one runs, else from disk (read-only, no lock taken)."""
    from boxui.daemon.client import find_daemon

    client = find_daemon()
    if client is not None:
        with client:
            return list(client.call("GET", "/v1/services"))
    return _views_on_disk()


def _views_on_disk() -> list[dict[str, Any]]:
    """What the daemon would answer, from the state dir as it is now."""
    from backend.services.service_store import ServiceStore
    from backend.state.lifecycle import InstanceState
    from backend.state.machine_store import MachineStore
    from backend.state.state_dir import open_state_dir
    from backend.state.supervisor_lock import lock_holder

    dirs = open_state_dir()
    specs, problems = ServiceStore(dirs).load_all()
    for problem in problems:
        click.echo(f"boxui: {problem}", err=True)
    machines = MachineStore(dirs).load_all(supervised=lock_holder(dirs.lock_file) is not None)
    views = []
    for spec in specs:
        members = [m for m in machines if m.spec is not None and m.spec.service == spec.name]
        ready = [m for m in members if m.state in (InstanceState.READY, InstanceState.BUSY)]
        views.append({
            "spec": spec.model_dump(mode="json"), "current_replicas": len(ready),
            "instances": [{"id": m.name, "state": m.state.value, "service": spec.name,
                           "endpoint": None} for m in members],
        })
    return views
