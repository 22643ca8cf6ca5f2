"""CLI commands that change machines: create, start, stop, restart, rm.

Each change goes through the API of the daemon that owns the VMs (`dispatch.call`
starts one when none runs). Bad input is refused while the command line is parsed, so
before any daemon is started.

Models, the engine and the daemon client are imported inside the commands: every `boxui`
invocation imports this module, and `boxui ls` must not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from backend.state.accelerator import ACCEL_REQUESTS, AccelRequest
from backend.state.machine_limits import MAX_MEMORY_MIB, MAX_VCPUS
from boxui.cli.dispatch import call
from boxui.cli.params import (
    disk_size,
    json_flag,
    machine_name,
    name_arg,
    port_mappings,
    template_ref,
)

if TYPE_CHECKING:
    from backend.state.machine_spec import MachineSpec, RestartPolicy
    from backend.state.mount_spec import MountSpec
    from backend.state.port_mapping import PortMapping


@click.command("create")
@machine_name
@click.option("--vcpus", type=click.IntRange(1, MAX_VCPUS), default=None,
              help="vCPUs [default: 1, or the template variant's].")
@click.option("--memory", "memory_mib", type=click.IntRange(64, MAX_MEMORY_MIB),
              default=None, help="Memory in MiB [default: 256, or the template variant's].")
@click.option("--image", default="default", callback=name_arg, show_default=True,
              help="Guest image: `default` (boxui's busybox + dropbear guest, in RAM) or "
              "an OS image from `boxui image ls`, booted from the machine's own disk.")
@click.option("--disk", "disk", metavar="SIZE", callback=disk_size,
              help="With an OS --image: the machine's disk size, e.g. 20G "
              "[default: the image's size].")
@click.option("--template", "template_ref", metavar="ID[:ROLE]", callback=template_ref,
              help="Make it from a template: restore its snapshot, or cold-boot its "
              "image. ROLE may be left out if the template has one.")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Boot your own kernel (with --initrd) instead of the image.")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--disk-image", "disk_image",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Attach a disk image as /dev/vda (raw, or qcow2 by suffix); "
              "needs --kernel and --initrd that mount it.")
@click.option("--accel", type=click.Choice(ACCEL_REQUESTS), default="auto",
              show_default=True)
@click.option("--restart", "restart_policy",
              type=click.Choice(["never", "on-failure", "always"]), default="never",
              show_default=True)
@click.option("--start/--no-start", default=True, show_default=True,
              help="Boot the machine once it is created.")
@click.option("--autostart", is_flag=True,
              help="Start it whenever the boxui daemon starts (see `boxui daemon install`).")
@click.option("--liveness-exec", metavar="CMD",
              help="Guest liveness probe: CMD run over SSH must exit 0 (every 10 s, 5 s "
              "each, unhealthy after 3 failures; tune in machine.toml).")
@click.option("--liveness-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Guest liveness probe: PORT (22, or a published port) must answer.")
@click.option("--provision", "provision", multiple=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A script run once as root after the first boot (repeatable, in order); "
              "its contents are copied into the machine now.")
@click.option("--port", "ports", multiple=True, metavar="[HOST:]GUEST[/udp]",
              callback=port_mappings,
              help="Forward 127.0.0.1:HOST to the guest's port GUEST (repeatable); without "
              "HOST a free port is picked at each start (`boxui port ls` shows it).")
@click.option("--mount", "mounts", multiple=True, metavar="HOST_DIR[:GUEST_DIR][:ro]",
              callback=lambda ctx, param, value: _parse_mounts(value),
              help="Share a host folder with the guest (virtio-9p), mounted at boot at "
              "GUEST_DIR [default: the same path as HOST_DIR]; repeatable.")
@json_flag
def create_cmd(name: str, vcpus: int | None, memory_mib: int | None, image: str,
               disk: str | None, template_ref: str | None, kernel: Path | None, initrd: Path | None,
               disk_image: Path | None, accel: AccelRequest, restart_policy: RestartPolicy,
               start: bool, autostart: bool, liveness_exec: str | None,
               liveness_port: int | None, provision: tuple[Path, ...],
               ports: list[PortMapping], mounts: list[MountSpec],
               as_json: bool) -> None:
    """Create a machine (and boot it unless --no-start)."""
    spec = _machine_spec(name, vcpus, memory_mib, template_ref, kernel, initrd, disk_image,
                         accel, restart_policy)
    _with_image(spec, image, disk, template_ref, memory_given=memory_mib is not None)
    spec.autostart = autostart
    spec.provision = [path.absolute() for path in provision]
    _set_ports(spec, ports)
    if mounts:
        _set_mounts(spec, mounts)
    if liveness_exec is not None or liveness_port is not None:
        _set_liveness(spec, liveness_exec, liveness_port)
    _report(name, as_json, call("POST", "/v1/machines", params={"start": start},
                                json=spec.model_dump(mode="json", exclude_none=True)))


def _with_image(spec: MachineSpec, image: str, disk: str | None,
                template_ref: str | None, *, memory_given: bool) -> None:
    """An OS image gives the machine a disk of its own; the daemon checks the image."""
    if image == "default":
        if disk is not None:
            raise click.UsageError("--disk needs an OS --image (see `boxui image ls`)")
        return
    if template_ref is not None or spec.kernel is not None:
        raise click.UsageError("--image cannot be combined with --template or --kernel")
    spec.image, spec.disk = image, disk
    if not memory_given:
        spec.memory_mib = 512  # systemd and apt want more than the busybox guest


def _set_ports(spec: MachineSpec, ports: list[PortMapping]) -> None:
    from backend.state.machine_spec import check_distinct_ports

    try:
        spec.ports = check_distinct_ports(ports)
    except ValueError as exc:
        raise click.UsageError(f"--port: {exc}") from None


def _parse_mounts(values: tuple[str, ...]) -> list[MountSpec]:
    from backend.state.mount_spec import MountError, parse_mount

    try:
        return [parse_mount(value, Path.cwd()) for value in values]
    except MountError as exc:
        raise click.UsageError(str(exc)) from None


def _set_mounts(spec: MachineSpec, mounts: list[MountSpec]) -> None:
    from pydantic import ValidationError

    from backend.state.validation_text import describe_validation_error

    try:
        spec.mounts = mounts
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc)) from None


def _set_liveness(spec: MachineSpec, command: str | None, port: int | None) -> None:
    from pydantic import ValidationError

    from backend.state.machine_spec import LivenessSpec
    from backend.state.validation_text import describe_validation_error

    if command is not None and port is not None:
        raise click.UsageError("--liveness-exec and --liveness-port do not go together")
    try:
        spec.liveness = LivenessSpec(exec=command, port=port)
    except ValidationError as exc:
        raise click.UsageError(describe_validation_error(exc)) from None


def _machine_spec(name: str, vcpus: int | None, memory_mib: int | None,
                  template_ref: str | None, kernel: Path | None, initrd: Path | None,
                  disk_image: Path | None, accel: AccelRequest,
                  restart_policy: RestartPolicy) -> MachineSpec:
    """The spec `create` asks for; option combinations that cannot work are usage errors."""
    if (kernel is None) != (initrd is None):
        raise click.UsageError("--kernel and --initrd go together")
    if disk_image is not None and kernel is None:
        raise click.UsageError("--disk-image needs --kernel and --initrd that mount it")
    if template_ref is not None and kernel is not None:
        raise click.UsageError("--template cannot be combined with --kernel/--initrd")
    if template_ref is not None:
        from backend.state.state_dir import open_state_dir
        from backend.templates.machine_from_template import spec_from_template

        return spec_from_template(open_state_dir(), name, template_ref, vcpus=vcpus,
                                  memory_mib=memory_mib, accel=accel, restart=restart_policy)
    from backend.state.machine_spec import MachineSpec

    return MachineSpec(name=name, vcpus=vcpus or 1, memory_mib=memory_mib or 256,
                       accel=accel, restart=restart_policy,
                       kernel=kernel.absolute() if kernel else None,
                       initrd=initrd.absolute() if initrd else None,
                       disk_image=disk_image.absolute() if disk_image else None)


@click.command("start")
@machine_name
@json_flag
def start_cmd(name: str, as_json: bool) -> None:
    """Boot a machine and wait until it is ready."""
    _report(name, as_json, call("POST", f"/v1/machines/{name}/start"))


@click.command("stop")
@machine_name
@click.option("--force", is_flag=True, help="Kill at once instead of powering off.")
@json_flag
def stop_cmd(name: str, force: bool, as_json: bool) -> None:
    """Power a machine off: ACPI, then QMP quit, then SIGTERM, then SIGKILL, each on the
    machine's [stop] deadline; says which one ended it."""
    view = call("POST", f"/v1/machines/{name}/stop", params={"force": force})
    _report(name, as_json, view, how=None if as_json else _how_it_ended(name))


@click.command("restart")
@machine_name
@json_flag
def restart_cmd(name: str, as_json: bool) -> None:
    """Stop a machine, then start it again."""
    _report(name, as_json, call("POST", f"/v1/machines/{name}/restart"))


@click.command("rm")
@machine_name
@click.option("--force", is_flag=True, help="Kill the machine first if it is running.")
def rm_cmd(name: str, force: bool) -> None:
    """Delete a machine, its disk state and its SSH keys."""
    call("DELETE", f"/v1/machines/{name}", params={"force": force})
    click.echo(f"deleted {name}")


def _how_it_ended(name: str) -> str | None:
    """What the machine's last event says ended its process, if it says so."""
    events = call("GET", "/v1/events/recent", params={"machine": name, "limit": 1})
    message = events[-1].get("data", {}).get("message", "") if events else ""
    if isinstance(message, str) and message.startswith("stopped: "):
        return message.removeprefix("stopped: ")
    if isinstance(message, str) and message.startswith("leftover QEMU"):
        return message
    return None


def _report(name: str, as_json: bool, view: dict[str, Any], *, how: str | None = None) -> None:
    """Print a machine as the daemon answered."""
    from backend.state.machine_store import LoadedMachine, machine_view

    machine = LoadedMachine.model_validate(view)
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(machine_view(machine))
        return
    record = machine.record
    port = f", ssh on 127.0.0.1:{record.ssh_port}" if record and record.ssh_port and \
        machine.state.value in ("ready", "busy", "booting") else ""
    reason = f" ({machine.reason})" if machine.reason else ""
    said = f": {how}" if how else ""
    click.echo(f"{name}: {machine.state.value}{reason}{port}{said}")


COMMANDS = [create_cmd, start_cmd, stop_cmd, restart_cmd, rm_cmd]
