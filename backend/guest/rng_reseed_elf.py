"""A 300-byte static x86-64 program that re-seeds a restored guest's kernel RNG.

Why a hand-made binary: guests restored from one memory snapshot wake up with the same
kernel CRNG state, so they would hand out the same "random" bytes until the kernel next
reseeds (up to a minute later). Writing to /dev/urandom only mixes bytes into the input
pool; making the CRNG use them *now* takes two ioctls (RNDADDENTROPY, then
RNDRESEEDCRNG), and busybox has no tool that issues them. The guest has no compiler or
interpreter either, so boxui writes this tiny program itself, with 64 fresh host bytes
baked in, sends it over SSH and runs it once. It makes no library calls: open, two
ioctls, exit.

Exit status: 0 re-seeded; 2 cannot open /dev/urandom; 3 RNDADDENTROPY refused;
4 RNDRESEEDCRNG refused (e.g. not root).
"""

from __future__ import annotations

import os
import struct

ENTROPY_BYTES = 64
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
_BASE = 0x400000
_HEADERS = 64 + 56  # ELF header + one program header
_PATH = b"/dev/urandom\0"


def _code(path_at: int, info_at: int) -> bytes:
    """Machine code; `path_at`/`info_at` are file offsets of the data it references."""
    out = bytearray()

    def rip_rel(prefix: bytes, target: int) -> None:
        # lea reg, [rip + disp32]: disp is relative to the end of this 7-byte instruction
        out.extend(prefix + struct.pack("<i", target - (_HEADERS + len(out) + 7)))

    out += b"\xb8\x02\x00\x00\x00"  # mov eax, 2 (open)
    rip_rel(b"\x48\x8d\x3d", path_at)  # lea rdi, [rip+path]
    out += b"\xbe\x01\x00\x00\x00"  # mov esi, O_WRONLY
    out += b"\x31\xd2"  # xor edx, edx
    out += b"\x0f\x05"  # syscall
    out += b"\xbf\x02\x00\x00\x00"  # mov edi, 2 (exit code if open failed)
    out += b"\x48\x85\xc0"  # test rax, rax
    fail_jumps = [len(out)]
    out += b"\x78\x00"  # js fail
    out += b"\x49\x89\xc4"  # mov r12, rax
    out += b"\xb8\x10\x00\x00\x00"  # mov eax, 16 (ioctl)
    out += b"\x4c\x89\xe7"  # mov rdi, r12
    out += b"\xbe" + struct.pack("<I", RNDADDENTROPY)  # mov esi, RNDADDENTROPY
    rip_rel(b"\x48\x8d\x15", info_at)  # lea rdx, [rip+info]
    out += b"\x0f\x05"  # syscall
    out += b"\xbf\x03\x00\x00\x00"  # mov edi, 3
    out += b"\x48\x85\xc0"  # test rax, rax
    fail_jumps.append(len(out))
    out += b"\x75\x00"  # jnz fail
    out += b"\xb8\x10\x00\x00\x00"  # mov eax, 16 (ioctl)
    out += b"\x4c\x89\xe7"  # mov rdi, r12
    out += b"\xbe" + struct.pack("<I", RNDRESEEDCRNG)  # mov esi, RNDRESEEDCRNG
    out += b"\x31\xd2"  # xor edx, edx
    out += b"\x0f\x05"  # syscall
    out += b"\xbf\x04\x00\x00\x00"  # mov edi, 4
    out += b"\x48\x85\xc0"  # test rax, rax
    fail_jumps.append(len(out))
    out += b"\x75\x00"  # jnz fail
    out += b"\x31\xff"  # xor edi, edi
    fail = len(out)
    out += b"\xb8\x3c\x00\x00\x00"  # fail: mov eax, 60 (exit)
    out += b"\x0f\x05"  # syscall
    for at in fail_jumps:
        out[at + 1] = fail - (at + 2)
    return bytes(out)


def reseed_program(entropy: bytes | None = None) -> bytes:
    """The ELF executable, carrying `entropy` (default: 64 fresh bytes from the host)."""
    seed = os.urandom(ENTROPY_BYTES) if entropy is None else entropy
    if len(seed) != ENTROPY_BYTES:
        raise ValueError(f"entropy must be {ENTROPY_BYTES} bytes")
    code_size = len(_code(0, 0))
    path_at = _HEADERS + code_size
    info_at = path_at + len(_PATH)
    info_at += -info_at % 4
    code = _code(path_at, info_at)
    # struct rand_pool_info { int entropy_count (bits); int buf_size (bytes); u32 buf[]; }
    info = struct.pack("<ii", ENTROPY_BYTES * 8, ENTROPY_BYTES) + seed
    body = code + _PATH + b"\0" * (info_at - path_at - len(_PATH)) + info
    size = _HEADERS + len(body)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH",
        2, 0x3E, 1,  # ET_EXEC, x86-64, version
        _BASE + _HEADERS, 64, 0,  # entry, phoff, shoff
        0, 64, 56, 1, 0, 0, 0,  # flags, ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    )  # fmt: skip
    program = struct.pack(
        "<IIQQQQQQ",
        1, 5, 0, _BASE, _BASE,  # PT_LOAD, R+X, offset, vaddr, paddr
        size, size, 0x1000,  # filesz, memsz, align
    )  # fmt: skip
    return header + program + body
