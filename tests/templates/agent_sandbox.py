"""Running the guest's restore agent on the test host where it cannot change the host.

The agent's steps act on whatever kernel runs it: it credits entropy to the kernel's pool
and forces a CRNG reseed (the RNDADDENTROPY and RNDRESEEDCRNG ioctls), sets
CLOCK_REALTIME and calls sethostname(). On the test host they are fenced off twice:

- new user, UTS, mount and PID namespaces (`unshare`): sethostname() renames the new UTS
  namespace only, and the agent holds no capability in the host's user namespace, so the
  kernel refuses the RNG ioctls and the clock (neither is namespaced) with EPERM rather
  than act on them;
- a seccomp filter answers those two ioctls and clock_settime(CLOCK_REALTIME) itself,
  without running them: 0 ("done") for a step the test lets succeed, an errno for the
  step it makes fail. That is what lets the agent go on to the hostname step, as it does
  in a guest.

Pointing the agent's entropy device at a FIFO or a plain file instead would not do:
RNDADDENTROPY on anything but the random devices fails (ENOTTY), so the agent would stop
at its first step and never reach the clock or the hostname; and no clock but
CLOCK_REALTIME can be set, so the clock step cannot be sent elsewhere either. The real
ioctls and the real clock are exercised in a guest, by the VM test
(tests/templates/test_snapshot_restore_vm.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backend.guest.restore_agent_elf import CLOCK_REALTIME, RNDADDENTROPY, RNDRESEEDCRNG

SYS_IOCTL, SYS_SETHOSTNAME, SYS_CLOCK_SETTIME = 16, 170, 227
#: the agent's steps in its order; a failed one is reported as status 3, 4, 5 or 6
STEPS = ("entropy", "reseed", "clock", "hostname")
#: fresh namespaces: the agent is root in them and in nothing else
UNSHARE = ["unshare", "--user", "--map-root-user", "--uts", "--mount", "--pid", "--fork",
           "--kill-child"]

_AUDIT_ARCH_X86_64 = 0xC000003E
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K
_OFF_NR, _OFF_ARCH = 0, 4  # in struct seccomp_data; args[i] (its low half) at 16 + 8 i
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


@dataclass(frozen=True)
class Stub:
    """Answer system call `nr` with `-errno` (0: success) without running it, when its
    argument `arg` (an index) is `value`."""

    nr: int
    errno: int
    arg: int
    value: int


def step_stubs(failing: str | None) -> list[Stub]:
    """Stubs for every step that must not reach the kernel; `failing` gets EPERM. The
    hostname is stubbed only to make it fail: it succeeds for real, in the namespace."""
    def answer(step: str) -> int:
        return errno.EPERM if step == failing else 0

    stubs = [Stub(SYS_IOCTL, answer("entropy"), 1, RNDADDENTROPY),
             Stub(SYS_IOCTL, answer("reseed"), 1, RNDRESEEDCRNG),
             Stub(SYS_CLOCK_SETTIME, answer("clock"), 0, CLOCK_REALTIME)]
    if failing == "hostname":
        stubs.append(Stub(SYS_SETHOSTNAME, errno.EPERM, 0, 0))
    return stubs


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def seccomp_filter(stubs: Iterable[Stub]) -> bytes:
    """A classic-BPF seccomp program: each stub's call (and argument) gets its answer,
    everything else runs; a call through any ABI but x86-64 kills the process."""
    program = [_insn(_LD_W_ABS, _OFF_ARCH), _insn(_JEQ_K, _AUDIT_ARCH_X86_64, jt=1),
               _insn(_RET_K, _RET_KILL_PROCESS)]
    for stub in stubs:
        answer = _insn(_RET_K, _RET_ERRNO | stub.errno)
        if stub.nr == SYS_SETHOSTNAME:  # whatever its arguments
            program += [_insn(_LD_W_ABS, _OFF_NR), _insn(_JEQ_K, stub.nr, jf=1), answer]
            continue
        program += [_insn(_LD_W_ABS, _OFF_NR), _insn(_JEQ_K, stub.nr, jf=3),
                    _insn(_LD_W_ABS, 16 + 8 * stub.arg), _insn(_JEQ_K, stub.value, jf=1),
                    answer]
    return b"".join(program) + _insn(_RET_K, _RET_ALLOW)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompInstaller:
    """A `preexec_fn` that installs a seccomp program (inherited by every child and kept
    across exec). Everything is allocated here, before the fork: the child only calls
    prctl()."""

    def __init__(self, program: bytes) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._code = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._code))

    def __call__(self) -> None:
        if self._libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or self._libc.prctl(
                _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(self._fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


def sandbox_problem() -> str | None:
    """Why the agent cannot be fenced off on this machine, or None if it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10,
                           preexec_fn=SeccompInstaller(seccomp_filter(step_stubs(None))))
    return None if probe.returncode == 0 else f"no new namespaces: {probe.stderr.strip()}"


def start_fenced(agent: Path, failing: str | None) -> subprocess.Popen[str]:
    """Run `agent` fenced off; once it exits, the process prints the namespace's
    hostname and exits with the agent's status."""
    script = '"$0"; status=$?; uname -n; exit "$status"'
    return subprocess.Popen([*UNSHARE, "sh", "-c", script, str(agent)], text=True,
                            stdout=subprocess.PIPE, env={"PATH": os.environ["PATH"]},
                            preexec_fn=SeccompInstaller(seccomp_filter(step_stubs(failing))))
