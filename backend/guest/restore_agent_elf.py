"""A tiny static x86-64 program that freshens a restored guest: RNG, clock, hostname.

Why: guests restored from one memory snapshot wake up with the same kernel CRNG state,
so right after a restore two clones would read the same bytes from /dev/urandom; their
wall clock says when the snapshot was saved (a week-old template makes a guest a week
behind: `make` sees sources from the future, TLS sees certificates not yet valid); and
each one calls itself by the template's build VM's name, not by its own.
Writing to /dev/urandom only mixes bytes into the input pool; making the CRNG use them
*now* takes two ioctls (RNDADDENTROPY, then RNDRESEEDCRNG), which no busybox tool
issues, and the guest has no compiler or interpreter. So boxui writes this program
itself (a few hundred bytes, no library calls), starts it in the template's build VM
just before the snapshot is saved, and so every restored guest wakes up with it
waiting on a virtio-serial port. The host sends one message down the port
(`agent_message`: 64 fresh bytes, its current time and the machine's name); the
program credits the bytes, forces the reseed, sets CLOCK_REALTIME and the hostname,
answers one byte (`'0'` + status) and exits. (The build points /etc/hostname at the
kernel's hostname and drops its own name from /etc/hosts before the save. Appending
the clone's own line there delayed its first SSH answer by about 7 ms of TCG time
(median of 45 restores each way), and nothing in the default guest looks it up.)

Why a port and not SSH: the first SSH session after a restore costs the guest most of
a second under TCG (dropbear re-executes itself, key exchange, a shell); the port costs
it a read and a few system calls. Linux's virtio console returns EOF at once while no
host end is connected, and poll() says so at once too, so between reads the program
waits for SIGIO, which the console driver sends when the host connects (and when data
arrives): it asks for it on the port (F_SETOWN, O_ASYNC) and keeps it blocked, so a
signal that comes before the wait is kept pending rather than lost. The wait ends after
a second anyway, in case no signal ever comes. It waits so in the build VM's last
second, and for as long as a warm pool member sits unclaimed: sleeping 20 ms between
reads, as it did before, put 0-30 ms under TCG on every claim (the agent's answer took
2.5-33 ms over 20 claims, now 2.2-3.3).

Status, the first step that failed (the steps after it are not tried): 0 all done;
2 cannot open the port or /dev/urandom; 3 RNDADDENTROPY refused; 4 RNDRESEEDCRNG
refused (e.g. not root); 5 clock refused; 6 hostname refused.
Protocol 1 agents (templates built before boxui set clocks and names) read only the 64
bytes of entropy.
"""

from __future__ import annotations

import struct

ENTROPY_BYTES = 64
NAME_BYTES = 64  # a hostname's limit; machine names are at most 63
#: what the host sends: entropy; the time (struct timespec); the hostname's length (u64)
#: and the name
MESSAGE_BYTES = ENTROPY_BYTES + 16 + 8 + NAME_BYTES
#: recorded with each snapshot, so the host knows what its agent expects
AGENT_PROTOCOL = 2
#: a symlink to the port's /dev/vportNp1, made when the agent is started (N varies)
GUEST_PORT = "/run/boxui-agent-port"
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
CLOCK_REALTIME = 0
O_WRONLY, O_RDWR = 1, 2
SIGIO = 29
F_SETFL, F_SETOWN, O_ASYNC = 4, 8, 0o20000
#: the longest wait for SIGIO between two reads, should none come
WAIT_SECONDS = 1
_BASE = 0x400000
_HEADERS = 64 + 56  # ELF header + one program header


class _Asm:
    """Just enough of an assembler: bytes, labels, and disp32 fixups (rip-relative
    operands and jumps), each of which ends its instruction."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []  # where a disp32 goes, its target

    def emit(self, data: bytes) -> None:
        self.out += data

    def label(self, name: str) -> None:
        self.labels[name] = len(self.out)

    def jump(self, short_opcode: int, target: str) -> None:
        """A jump in its rel32 form (`jcc` 0x7X becomes 0F 8X, `jmp` EB becomes E9)."""
        long = b"\xe9" if short_opcode == 0xEB else bytes([0x0F, short_opcode + 0x10])
        self.rip(long, target)

    def rip(self, prefix: bytes, target: str) -> None:
        self.out += prefix + b"\0\0\0\0"
        self.fixups.append((len(self.out) - 4, target))

    def open_or_exit(self, path: str, flags: int) -> None:
        """rax = open(the string at label `path`, flags), or exit with status 2."""
        self.emit(b"\xb8\x02\x00\x00\x00")  # mov eax, 2 (open)
        self.rip(b"\x48\x8d\x3d", path)  # lea rdi, [rip+path]
        self.emit(b"\xbe" + struct.pack("<I", flags))  # mov esi, flags
        self.emit(b"\x31\xd2\x0f\x05")  # xor edx, edx; syscall
        self.emit(b"\xbf\x02\x00\x00\x00\x48\x85\xc0")  # mov edi, 2; test rax, rax
        self.jump(0x78, "exit")  # js exit

    def syscall_or_report(self, status: int) -> None:
        """syscall; if it returned nonzero, report `status` (the steps after it are skipped)."""
        self.emit(b"\x0f\x05\x41\xbf" + struct.pack("<I", status))  # syscall; mov r15d, status
        self.emit(b"\x48\x85\xc0")  # test rax, rax
        self.jump(0x75, "report")  # jnz report

    def link(self) -> bytes:
        for at, target in self.fixups:  # relative to the end of the instruction
            self.out[at:at + 4] = struct.pack("<i", self.labels[target] - (at + 4))
        return bytes(self.out)


def agent_message(entropy: bytes, now_ns: int, name: str) -> bytes:
    """What the host sends a protocol-2 agent for a machine called `name`."""
    hostname = name.encode()
    if len(entropy) != ENTROPY_BYTES or not 0 < len(hostname) < NAME_BYTES:
        raise ValueError("64 bytes of entropy and a 1-63 byte name are needed")
    return (entropy + struct.pack("<qq", *divmod(now_ns, 1_000_000_000))
            + struct.pack("<Q", len(hostname)) + hostname.ljust(NAME_BYTES, b"\0"))


def agent_program(port: str = GUEST_PORT) -> bytes:
    """The ELF executable; `port` is the device it serves (a test on the host points it
    at a FIFO, and runs it where the RNG, the clock and the hostname cannot be touched)."""
    a = _Asm()
    # r12 = port fd, r13 = /dev/urandom fd, r14 = bytes received, r15 = status
    _receive_message(a)
    _freshen(a, CLOCK_REALTIME)
    _report_and_exit(a)
    _wait_then_read_again(a)
    _data(a, port)
    return _elf(a.link())


def _receive_message(a: _Asm) -> None:
    """Open the port and /dev/urandom, then read until the whole message is in."""
    a.open_or_exit("port", O_RDWR)
    a.emit(b"\x49\x89\xc4")  # mov r12, rax
    a.open_or_exit("urandom", O_WRONLY)
    a.emit(b"\x49\x89\xc5")  # mov r13, rax
    _ask_for_sigio(a)
    a.emit(b"\x45\x31\xf6")  # xor r14d, r14d
    a.label("read")
    a.emit(b"\x31\xc0\x4c\x89\xe7")  # xor eax, eax (read); mov rdi, r12
    a.rip(b"\x48\x8d\x35", "buf")  # lea rsi, [rip+buf]
    a.emit(b"\x4c\x01\xf6")  # add rsi, r14
    a.emit(b"\xba" + struct.pack("<I", MESSAGE_BYTES))  # mov edx, MESSAGE_BYTES
    a.emit(b"\x44\x29\xf2")  # sub edx, r14d
    a.emit(b"\x0f\x05\x48\x85\xc0")  # syscall; test rax, rax
    a.jump(0x7E, "wait")  # jle wait (EOF: no host yet; or an error)
    a.emit(b"\x49\x01\xc6")  # add r14, rax
    a.emit(b"\x49\x81\xfe" + struct.pack("<I", MESSAGE_BYTES))  # cmp r14, MESSAGE_BYTES
    a.jump(0x72, "read")  # jb read


def _freshen(a: _Asm, clock: int) -> None:
    """Credit the entropy, force the reseed, set the clock and the hostname; status 0."""
    a.emit(b"\xb8\x10\x00\x00\x00\x4c\x89\xef")  # mov eax, 16 (ioctl); mov rdi, r13
    a.emit(b"\xbe" + struct.pack("<I", RNDADDENTROPY))  # mov esi, RNDADDENTROPY
    a.rip(b"\x48\x8d\x15", "info")  # lea rdx, [rip+info]
    a.syscall_or_report(3)
    a.emit(b"\xb8\x10\x00\x00\x00\x4c\x89\xef")  # mov eax, 16 (ioctl); mov rdi, r13
    a.emit(b"\xbe" + struct.pack("<I", RNDRESEEDCRNG) + b"\x31\xd2")  # mov esi, ..; xor edx
    a.syscall_or_report(4)
    a.emit(b"\xb8\xe3\x00\x00\x00")  # mov eax, 227 (clock_settime)
    a.emit(b"\xbf" + struct.pack("<I", clock))  # mov edi, clock
    a.rip(b"\x48\x8d\x35", "when")  # lea rsi, [rip+when]
    a.syscall_or_report(5)
    a.emit(b"\xb8\xaa\x00\x00\x00")  # mov eax, 170 (sethostname)
    a.rip(b"\x48\x8d\x3d", "name")  # lea rdi, [rip+name]
    a.rip(b"\x48\x8b\x35", "name_len")  # mov rsi, [rip+name_len]
    a.syscall_or_report(6)
    a.emit(b"\x45\x31\xff")  # xor r15d, r15d


def _report_and_exit(a: _Asm) -> None:
    """Answer one byte, '0' + status, and exit with the status."""
    a.label("report")
    a.rip(b"\x48\x8d\x35", "ack")  # lea rsi, [rip+ack]
    a.emit(b"\x44\x89\xf8\x04\x30\x88\x06")  # mov eax, r15d; add al, '0'; mov [rsi], al
    a.emit(b"\xb8\x01\x00\x00\x00\x4c\x89\xe7")  # mov eax, 1 (write); mov rdi, r12
    a.emit(b"\xba\x01\x00\x00\x00\x0f\x05")  # mov edx, 1; syscall
    a.emit(b"\x44\x89\xff")  # mov edi, r15d
    a.label("exit")
    a.emit(b"\xb8\x3c\x00\x00\x00\x0f\x05")  # mov eax, 60 (exit); syscall


def _ask_for_sigio(a: _Asm) -> None:
    """Block SIGIO, then have the port send it to this process. A failure is not
    checked: the wait between reads then ends after `WAIT_SECONDS`."""
    a.emit(b"\xb8\x0e\x00\x00\x00\x31\xff")  # mov eax, 14 (rt_sigprocmask); SIG_BLOCK
    a.rip(b"\x48\x8d\x35", "sigset")  # lea rsi, [rip+sigset]
    a.emit(b"\x31\xd2\x41\xba\x08\x00\x00\x00\x0f\x05")  # xor edx; mov r10d, 8; syscall
    a.emit(b"\xb8\x27\x00\x00\x00\x0f\x05")  # mov eax, 39 (getpid); syscall
    a.emit(b"\x48\x89\xc2\xb8\x48\x00\x00\x00")  # mov rdx, rax; mov eax, 72 (fcntl)
    a.emit(b"\x4c\x89\xe7\xbe" + struct.pack("<I", F_SETOWN))  # mov rdi, r12; mov esi
    a.emit(b"\x0f\x05")  # syscall
    a.emit(b"\xb8\x48\x00\x00\x00\x4c\x89\xe7")  # mov eax, 72 (fcntl); mov rdi, r12
    a.emit(b"\xbe" + struct.pack("<I", F_SETFL))  # mov esi, F_SETFL
    a.emit(b"\xba" + struct.pack("<I", O_RDWR | O_ASYNC) + b"\x0f\x05")  # mov edx; syscall


def _wait_then_read_again(a: _Asm) -> None:
    """No host yet: wait for SIGIO (`WAIT_SECONDS` at most), then read again."""
    a.label("wait")
    a.emit(b"\xb8\x80\x00\x00\x00")  # mov eax, 128 (rt_sigtimedwait)
    a.rip(b"\x48\x8d\x3d", "sigset")  # lea rdi, [rip+sigset]
    a.emit(b"\x31\xf6")  # xor esi, esi (no siginfo)
    a.rip(b"\x48\x8d\x15", "timespec")  # lea rdx, [rip+timespec]
    a.emit(b"\x41\xba\x08\x00\x00\x00\x0f\x05")  # mov r10d, 8 (sigset size); syscall
    a.jump(0xEB, "read")  # jmp read


def _data(a: _Asm, port: str) -> None:
    """The paths, the wait's signal set and timeout, and the message's buffer."""
    a.label("port")
    a.emit(port.encode() + b"\0")
    a.label("urandom")
    a.emit(b"/dev/urandom\0")
    a.emit(b"\0" * (-(_HEADERS + len(a.out)) % 8))
    a.label("sigset")
    a.emit(struct.pack("<Q", 1 << (SIGIO - 1)))
    a.label("timespec")
    a.emit(struct.pack("<qq", WAIT_SECONDS, 0))
    a.label("info")  # struct rand_pool_info { int entropy_count (bits); int buf_size; buf }
    a.emit(struct.pack("<ii", ENTROPY_BYTES * 8, ENTROPY_BYTES))
    a.label("buf")
    a.emit(b"\0" * ENTROPY_BYTES)
    for label, size in (("when", 16), ("name_len", 8), ("name", NAME_BYTES)):
        a.label(label)  # the rest of the message, as `agent_message` lays it out
        a.emit(b"\0" * size)
    a.label("ack")
    a.emit(b"\0")


def _elf(body: bytes) -> bytes:
    """One loadable segment holding the headers and `body`, entered right after them."""
    size = _HEADERS + len(body)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH",
        2, 0x3E, 1,  # ET_EXEC, x86-64, version
        _BASE + _HEADERS, 64, 0,  # entry, phoff, shoff
        0, 64, 56, 1, 0, 0, 0,  # flags, ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    )  # fmt: skip
    program = struct.pack(
        "<IIQQQQQQ",
        1, 7, 0, _BASE, _BASE,  # PT_LOAD, R+W+X (it writes into its buffer), offset, addrs
        size, size, 0x1000,  # filesz, memsz, align
    )  # fmt: skip
    return header + program + body
