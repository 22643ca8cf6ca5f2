"""`boxui ssh`, `ssh-config` and `exec`: reach a running machine with its own key.

None of these takes the state dir's lock: they only read the machine's record (for its
port) and keys, so they work while a supervisor runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.guest.errors import GuestImageError
from backend.guest.machine_seed import MachineKeys, load_machine_keys
from backend.state.machine_store import MachineStore
from backend.state.state_dir import open_state_dir
from backend.state.supervisor_lock import lock_holder
from backend.supervision.machine_exec import argv_with_env
from backend.supervision.ssh_access import (
    exec_command,
    find_ssh,
    ssh_argv,
    ssh_config_block,
    write_known_hosts,
)

REACHABLE = ("ready", "busy", "draining")


@dataclass(frozen=True)
class Target:
    machine_dir: Path
    keys: MachineKeys
    port: int


def _target(name: str) -> Target:
    dirs = open_state_dir()
    supervised = lock_holder(dirs.lock_file) is not None
    machine = MachineStore(dirs).load(name, supervised=supervised)
    record = machine.record
    alive = machine.needs_recovery and machine.reason and "running without" in machine.reason
    if machine.state.value not in REACHABLE and not alive:
        raise BoxuiError(f"{name} is {machine.state.value}, not running; "
                         f"start it with: boxui start {name}")
    if record is None or record.ssh_port is None:
        raise BoxuiError(f"{name} has no SSH port recorded")
    machine_dir = dirs.machine_dir(name)
    try:
        keys = load_machine_keys(machine_dir)
    except GuestImageError as exc:
        raise BoxuiError(f"{name} has no SSH keys boxui made ({exc}); it boots a kernel of "
                         "its own, so reach it your own way") from None
    write_known_hosts(machine_dir, keys, record.ssh_port)
    return Target(machine_dir, keys, record.ssh_port)


def ssh_exec_argv(name: str, command: list[str] | None) -> list[str]:
    target = _target(name)
    return ssh_argv(target.machine_dir, target.keys, target.port, command, find_ssh())


def ssh_config_text(name: str) -> str:
    target = _target(name)
    return ssh_config_block(name, target.machine_dir, target.keys, target.port)


async def run_exec(name: str, command: list[str]) -> int:
    target = _target(name)
    env = MachineStore(open_state_dir()).load_spec(name).env
    return await exec_command(target.port, target.keys, target.machine_dir,
                              argv_with_env(command, env),
                              sys.stdout.buffer, sys.stderr.buffer)
