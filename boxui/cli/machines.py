"""CLI commands that change machines: create, start, stop, restart, rm, plus logs, ssh,
ssh-config, exec and the foreground daemon.

Each change goes through the daemon's API when a daemon runs (it owns the VMs), and is
otherwise done here under the state dir's lock; the output is the same either way.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from backend.errors import BoxuiError
from backend.state.accelerator import ACCEL_REQUESTS, AccelRequest
from backend.state.machine_limits import MAX_MEMORY_MIB, MAX_VCPUS

if TYPE_CHECKING:  # the engine's imports load only for commands that need them
    from backend.supervision.supervisor import Supervisor
    from boxui.daemon.client import DaemonClient

T = TypeVar("T")


def act(direct: Callable[[Supervisor], Awaitable[T]],
        remote: Callable[[DaemonClient], T]) -> T:
    """Through the daemon if one serves this state dir, else here under the lock."""
    from boxui.daemon.client import find_daemon
    from boxui.daemon.supervised import with_supervisor

    client = find_daemon()
    if client is None:
        return _run(with_supervisor(direct))  # type: ignore[arg-type]
    with client:
        return remote(client)


def _progress(name: str) -> Callable[[str, str], None]:
    from boxui.daemon.supervised import progress_printer

    return progress_printer(name)


def _template_ref(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from backend.state.names import is_valid_name

    if value is None:
        return None
    template_id, _, role = value.partition(":")
    if not is_valid_name(template_id) or (role and not is_valid_name(role)):
        raise click.BadParameter(f"{value!r}: use ID or ID:ROLE (a-z, 0-9, '-')",
                                 ctx=ctx, param=param)
    return value


def register(cli: click.Group, name_arg: object) -> None:
    def machine_name(f):  # type: ignore[no-untyped-def]
        return click.argument("name", callback=name_arg)(f)  # type: ignore[arg-type]

    @cli.command("create")
    @machine_name
    @click.option("--vcpus", type=click.IntRange(1, MAX_VCPUS), default=None,
                  help="vCPUs [default: 1, or the template variant's].")
    @click.option("--memory", "memory_mib", type=click.IntRange(64, MAX_MEMORY_MIB),
                  default=None, help="Memory in MiB [default: 256, or the template variant's].")
    @click.option("--image", type=click.Choice(["default"]), default="default",
                  help="Guest image (boxui's own busybox + dropbear guest).")
    @click.option("--template", "template_ref", metavar="ID[:ROLE]", callback=_template_ref,
                  help="Make it from a template: restore its snapshot, or cold-boot its "
                  "image. ROLE may be left out if the template has one.")
    @click.option("--kernel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Boot your own kernel (with --initrd) instead of the image.")
    @click.option("--initrd", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--disk", "disk_image",
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
    @click.option("--json", "as_json", is_flag=True)
    def create_cmd(name: str, vcpus: int | None, memory_mib: int | None, image: str,
                   template_ref: str | None, kernel: Path | None, initrd: Path | None,
                   disk_image: Path | None, accel: AccelRequest, restart_policy: str, start: bool,
                   as_json: bool) -> None:
        """Create a machine (and boot it unless --no-start)."""
        from backend.state.machine_spec import MachineSpec

        if (kernel is None) != (initrd is None):
            raise click.UsageError("--kernel and --initrd go together")
        if disk_image is not None and kernel is None:
            raise click.UsageError("--disk needs --kernel and --initrd that mount it")
        if template_ref is not None and kernel is not None:
            raise click.UsageError("--template cannot be combined with --kernel/--initrd")
        if template_ref is not None:
            from backend.state.state_dir import open_state_dir
            from backend.templates.machine_from_template import spec_from_template

            spec = spec_from_template(open_state_dir(), name, template_ref, vcpus=vcpus,
                                      memory_mib=memory_mib, accel=accel,
                                      restart=restart_policy)  # type: ignore[arg-type]
        else:
            spec = MachineSpec(name=name, vcpus=vcpus or 1, memory_mib=memory_mib or 256,
                               accel=accel, restart=restart_policy,  # type: ignore[arg-type]
                               kernel=kernel.absolute() if kernel else None,
                               initrd=initrd.absolute() if initrd else None,
                               disk_image=disk_image.absolute() if disk_image else None)

        async def work(sup: Supervisor) -> None:
            import asyncio

            # a snapshot that cannot serve this machine is refused before it exists
            await asyncio.to_thread(sup.restore_plan, spec)
            await sup.engine.create_machine(spec)
            if start:
                await sup.start_machine(name, progress=_progress(name))

        view = act(lambda sup: _none(work(sup)), lambda c: c.call(
            "POST", "/v1/machines", json=spec.model_dump(mode="json", exclude_none=True),
            params={"start": start}))
        _report(name, as_json, view)

    @cli.command("start")
    @machine_name
    @click.option("--json", "as_json", is_flag=True)
    def start_cmd(name: str, as_json: bool) -> None:
        """Boot a machine and wait until it is ready."""
        view = act(lambda sup: _none(sup.start_machine(name, progress=_progress(name))),
                   lambda c: c.call("POST", f"/v1/machines/{name}/start"))
        _report(name, as_json, view)

    @cli.command("stop")
    @machine_name
    @click.option("--force", is_flag=True, help="Kill at once instead of powering off.")
    @click.option("--json", "as_json", is_flag=True)
    def stop_cmd(name: str, force: bool, as_json: bool) -> None:
        """Power a machine off (ACPI, then quit, then kill)."""
        view = act(lambda sup: _none(sup.stop_machine(name, force=force)),
                   lambda c: c.call("POST", f"/v1/machines/{name}/stop",
                                    params={"force": force}))
        _report(name, as_json, view)

    @cli.command("restart")
    @machine_name
    @click.option("--json", "as_json", is_flag=True)
    def restart_cmd(name: str, as_json: bool) -> None:
        """Stop a machine, then start it again."""
        view = act(lambda sup: _none(sup.restart_machine(name,
                                                         progress=_progress(name))),
                   lambda c: c.call("POST", f"/v1/machines/{name}/restart"))
        _report(name, as_json, view)

    @cli.command("rm")
    @machine_name
    @click.option("--force", is_flag=True, help="Kill the machine first if it is running.")
    def rm_cmd(name: str, force: bool) -> None:
        """Delete a machine, its disk state and its SSH keys."""
        act(lambda sup: sup.delete_machine(name, force=force),
            lambda c: c.call("DELETE", f"/v1/machines/{name}", params={"force": force}))
        click.echo(f"deleted {name}")

    @cli.command("logs")
    @machine_name
    @click.option("--follow", "-f", is_flag=True, help="Keep printing new console output.")
    def logs_cmd(name: str, follow: bool) -> None:
        """Print a machine's serial console log."""
        from boxui.cli.follow_console import print_console

        with contextlib.suppress(KeyboardInterrupt):
            _run(print_console(name, follow=follow))

    @cli.command("ssh")
    @machine_name
    @click.argument("command", nargs=-1)
    def ssh_cmd(name: str, command: tuple[str, ...]) -> None:
        """Open an interactive shell in a machine (with the system ssh)."""
        from boxui.ssh_commands import ssh_exec_argv

        argv = ssh_exec_argv(name, list(command) or None)
        sys.stdout.flush()
        os.execvp(argv[0], argv)

    @cli.command("ssh-config")
    @machine_name
    def ssh_config_cmd(name: str) -> None:
        """Print a Host block for ~/.ssh/config."""
        from boxui.ssh_commands import ssh_config_text

        click.echo(ssh_config_text(name), nl=False)

    @cli.command("exec", context_settings={"ignore_unknown_options": True})
    @machine_name
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def exec_cmd(name: str, command: tuple[str, ...]) -> None:
        """Run a command in a machine over SSH; exits with its exit code."""
        from boxui.daemon.client import find_daemon
        from boxui.ssh_commands import run_exec

        client = find_daemon()
        if client is None:
            sys.exit(_run(run_exec(name, list(command))))
        with client:  # counted as in-flight work by the daemon (scale-down waits for it)
            result = client.call("POST", f"/v1/machines/{name}/exec",
                                 json={"argv": list(command)})
        sys.stdout.buffer.write(base64.b64decode(result["stdout_b64"]))
        sys.stdout.flush()
        sys.stderr.buffer.write(base64.b64decode(result["stderr_b64"]))
        sys.stderr.flush()
        sys.exit(int(result["exit_code"]))

    @cli.command("daemon")
    def daemon_cmd() -> None:
        """Run the supervisor in the foreground (VMs keep running when it stops)."""
        from backend.state.state_dir import open_state_dir
        from backend.state.supervisor_lock import SupervisorLock

        # the lock first: a second daemon gives up before it loads the engine
        lock = SupervisorLock(open_state_dir().lock_file)
        lock.acquire()
        from boxui.daemon.serve import run_daemon

        with contextlib.suppress(KeyboardInterrupt):
            _run(run_daemon(lock=lock))

    @cli.command("demo")
    @click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Demo state dir (default: next to the normal one, named *-demo); "
                  "wiped at start if made by an earlier demo.")
    def demo_cmd(home: Path | None) -> None:
        """Open the app over sample machines that show every state (no VMs involved)."""
        from boxui.tui.demo import run_demo

        run_demo(home)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # not at import time: `boxui daemon` must lose a lock race quickly

    return asyncio.run(coro)


async def _none(work: Awaitable[object]) -> None:
    """Direct-path results are read back from disk, like the daemon's answer."""
    await work


def _report(name: str, as_json: bool, view: dict[str, Any] | None = None) -> None:
    """Print a machine: the daemon's answer, or (direct path) what is on disk now."""
    from backend.state.machine_store import LoadedMachine, MachineStore, machine_view
    from backend.state.state_dir import open_state_dir

    if view is None:
        machine = MachineStore(open_state_dir()).load(name, supervised=True)
    else:
        machine = LoadedMachine.model_validate(view)
    if as_json:
        from boxui.cli.output import emit_json

        emit_json(machine_view(machine))
        return
    record = machine.record
    port = f", ssh on 127.0.0.1:{record.ssh_port}" if record and record.ssh_port and \
        machine.state.value in ("ready", "busy", "booting") else ""
    reason = f" ({machine.reason})" if machine.reason else ""
    click.echo(f"{name}: {machine.state.value}{reason}{port}")


__all__ = ["BoxuiError", "register"]
