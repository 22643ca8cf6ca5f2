"""Freshen a guest restored from a shared snapshot: new kernel RNG state, today's time,
its own name.

Every guest restored from one snapshot resumes with the same kernel CRNG state, so
right after restore two clones would read the same bytes from /dev/urandom; its wall
clock resumes at the moment the snapshot was saved; and it calls itself by the build
VM's name. A template build starts a tiny agent in the guest just before saving it
(`stage_agent`, over SSH; see `backend.guest.restore_agent_elf`), so each restored
guest wakes up with it waiting on a virtio-serial port; `freshen_guest` sends it 64
bytes of host entropy, the host's time and the machine's name through the port's host
end (a unix socket of the machine's QEMU), and it forces an immediate CRNG reseed, sets
the clock and the hostname, and answers. It needs root in the guest, which boxui's
guest gives; a guest that refuses keeps working but is reported as not re-seeded, or
its clock or name as not set. What this cannot change: the guest's SSH host key and
any randomness user space drew before the snapshot (dropbear's own pool included) stay
shared.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

from backend.drivers.qemu.cmdline import AGENT_PORT_NAME
from backend.errors import BoxuiError
from backend.guest.machine_seed import MachineKeys
from backend.guest.restore_agent_elf import (
    ENTROPY_BYTES,
    GUEST_PORT,
    agent_message,
    agent_program,
)
from backend.supervision.ssh_access import exec_command

AGENT_SOCKET = "agent.sock"
AGENT_TIMEOUT = 10.0
_GUEST_AGENT = "/run/boxui-restore-agent"
# The port's device name depends on how many virtio devices precede it, so the agent
# opens a fixed symlink made from the port's name. /etc/hostname follows the kernel's
# hostname from now on (the agent sets it), and /etc/hosts stops naming the build VM,
# which no restored guest is. The agent must still run after 0.3 s (it exits at once if
# it cannot open its port), else the build fails here, not at restore.
_STAGE = f"""umask 077
for d in /sys/class/virtio-ports/*; do
  [ "$(cat "$d/name")" = {AGENT_PORT_NAME} ] && ln -sf "/dev/${{d##*/}}" {GUEST_PORT}
done
[ -e {GUEST_PORT} ] || {{ echo "no virtio port named {AGENT_PORT_NAME}"; exit 3; }}
ln -sf /proc/sys/kernel/hostname /etc/hostname || {{ echo "cannot link /etc/hostname"; exit 6; }}
sed -i '/^127\\.0\\.1\\.1 /d' /etc/hosts || {{ echo "cannot edit /etc/hosts"; exit 6; }}
cat > {_GUEST_AGENT} && chmod 700 {_GUEST_AGENT} || exit 4
setsid {_GUEST_AGENT} </dev/null >/dev/null 2>&1 &
sleep 0.3
kill -0 $! || {{ echo "the agent exited at once"; exit 5; }}
"""


async def stage_agent(port: int, keys: MachineKeys, machine_dir: Path) -> None:
    """Start the agent in a build VM, to be saved with it (raises BoxuiError)."""
    out = io.BytesIO()
    status = await exec_command(port, keys, machine_dir, ["sh", "-c", _STAGE], out, out,
                                stdin=agent_program(), timeout=60,
                                connect_timeout=60)  # a build can wait out a slow guest's
                                                     # key exchange (OpenSSH under TCG)
    if status != 0:
        said = out.getvalue().decode(errors="replace").strip()[:200]
        raise BoxuiError(f"could not start the restore agent in the guest (exit {status}): {said}")


@dataclass(frozen=True)
class Freshened:
    """What the agent did; a problem is None when that part was done."""

    rng_problem: str | None
    clock_problem: str | None
    #: the hostname
    name_problem: str | None


#: templates built before the agent set clocks and names (protocol 1) keep the
#: snapshot's time and its build VM's name
OLD_AGENT = "its template was built before boxui did this at restore; rebuild the template"
NOT_REACHED = "the agent stopped before this step"
# the agent's answer when a step failed: which step (0 RNG, 1 clock, 2 name), and why
_FAILED_STEP = {
    b"2": (0, "the agent could not open its port or /dev/urandom"),
    b"3": (0, "the guest refused RNDADDENTROPY"),
    b"4": (0, "the guest refused RNDRESEEDCRNG"),
    b"5": (1, "the guest refused clock_settime"),
    b"6": (2, "the guest refused sethostname"),
}


async def freshen_guest(agent_socket: Path, protocol: int, name: str,
                        timeout: float = AGENT_TIMEOUT) -> Freshened:
    """Re-seed a restored guest's kernel RNG and, from protocol 2, set its clock and
    make its hostname `name`."""
    writer: asyncio.StreamWriter | None = None
    problems: list[str | None] = [None, None, None]
    if protocol < 2:
        problems[1:] = [OLD_AGENT, OLD_AGENT]
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(agent_socket))
            entropy = os.urandom(ENTROPY_BYTES)
            # the time is read now: the guest sets it within milliseconds
            writer.write(agent_message(entropy, time.time_ns(), name)
                         if protocol >= 2 else entropy)
            await writer.drain()
            answer = await reader.readexactly(1)
    except TimeoutError:
        return _failed(problems, 0, f"the guest's agent did not answer within {timeout:g} s",
                       every=True)
    except (OSError, asyncio.IncompleteReadError) as exc:
        return _failed(problems, 0, f"no agent on {agent_socket}: {exc}", every=True)
    finally:
        if writer is not None:
            writer.close()
    if answer == b"0":
        return Freshened(*problems)
    step, why = _FAILED_STEP.get(answer, (0, f"unexpected answer {answer!r} from the agent"))
    return _failed(problems, step, why)


def _failed(problems: list[str | None], step: int, why: str, every: bool = False) -> Freshened:
    """`why` for the step that failed; the steps after it were not reached (or, with
    `every`, failed for the same reason). A problem already known stays."""
    after = [known or (why if every else NOT_REACHED) for known in problems[step + 1:]]
    done = [*problems[:step], why, *after]
    return Freshened(*done)
