"""Per-machine secrets, delivered by appending a small cpio archive to the shared initrd.

Why this shape: one base image serves every machine, but each machine needs its own SSH
identity (host key) and its own authorized client key, and should not start with the
same RNG state as its siblings. Linux unpacks concatenated initramfs archives in order
and later members overwrite earlier ones, so `base initrd.img + seed.cpio` gives each
machine its files without rebuilding or copying the image tree.

The one trap (found by reading `init/initramfs.c` and booting): after the gzip'd base
archive, the kernel only recognises the next uncompressed archive if it starts on a
4-byte boundary of the whole blob; zero bytes in between are skipped. So the base is
padded with zeros to a 512-byte boundary before the seed is appended.

The host key is generated in Python and written in dropbear's own format (string
"ssh-ed25519", string seed||pub), so no `dropbearkey` is needed on the host and the
public half is known without parsing tool output.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backend.guest.errors import GuestImageError
from backend.guest.guest_files import (
    GUEST_AUTHORIZED_KEYS,
    GUEST_ENV_FILE,
    GUEST_HOST_KEY,
    GUEST_RANDOM_SEED,
)
from backend.guest.image_builder import GuestImage
from backend.guest.newc import Entry, write_archive
from backend.state.atomic_write import atomic_write_bytes

if TYPE_CHECKING:
    import asyncssh

CLIENT_KEY_FILE = "id_ed25519"
CLIENT_PUB_FILE = "id_ed25519.pub"
HOST_KEY_FILE = "dropbear_ed25519_host_key"
HOST_PUB_FILE = "ssh_host_ed25519_key.pub"
MACHINE_INITRD_FILE = "initrd.img"
RANDOM_SEED_BYTES = 512
_ALIGN = 512
_KEY_TYPE = b"ssh-ed25519"


@dataclass(frozen=True)
class MachineKeys:
    """Where a machine's key files are on the host."""

    client_key: Path  # OpenSSH private key, 0600: what the host logs in with
    client_public: Path  # its .pub line, which goes into the guest's authorized_keys
    host_key: Path  # dropbear-format host private key, 0600, copied into the guest
    host_public: Path  # the host key's OpenSSH public line, for known_hosts


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def dropbear_ed25519_private(seed: bytes, public: bytes) -> bytes:
    """Encode an Ed25519 key the way dropbear stores host keys."""
    if len(seed) != 32 or len(public) != 32:
        raise ValueError("ed25519 seed and public key must be 32 bytes each")
    return _ssh_string(_KEY_TYPE) + _ssh_string(seed + public)


def openssh_public_line(key: Ed25519PublicKey, comment: str) -> str:
    """`ssh-ed25519 <base64 wire blob> <comment>`, the line known_hosts and .pub hold."""
    line = key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode("ascii")
    return f"{line} {comment}\n"


def _keys_in(machine_dir: Path) -> MachineKeys:
    return MachineKeys(
        client_key=machine_dir / CLIENT_KEY_FILE,
        client_public=machine_dir / CLIENT_PUB_FILE,
        host_key=machine_dir / HOST_KEY_FILE,
        host_public=machine_dir / HOST_PUB_FILE,
    )


def load_machine_keys(machine_dir: Path) -> MachineKeys:
    """The keys `create_machine_keys` made earlier; raise if any file is missing."""
    keys = _keys_in(machine_dir)
    missing = [p.name for p in vars(keys).values() if not Path(p).is_file()]
    if missing:
        raise GuestImageError(f"machine keys incomplete in {machine_dir}: missing {missing}")
    return keys


def create_machine_keys(machine_dir: Path) -> MachineKeys:
    """Give a machine its client key pair and SSH host key, once.

    Existing complete keys are returned untouched: regenerating them would silently
    change the machine's identity (known_hosts) and lock out anything holding the old key.
    """
    machine_dir.mkdir(parents=True, exist_ok=True)
    keys = _keys_in(machine_dir)
    present = [Path(p).exists() for p in vars(keys).values()]
    if all(present):
        return keys
    # asyncssh (~0.2 s to import) only here and below: a daemon's start-up imports this
    # module but must re-adopt its machines before it loads anything it can do without
    import asyncssh

    comment = f"boxui@{machine_dir.name}"
    client = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    host = Ed25519PrivateKey.generate()
    seed = host.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    public = host.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    # host key first and client key last: a crash in between leaves an incomplete set,
    # which the next call regenerates as a whole
    atomic_write_bytes(keys.host_key, dropbear_ed25519_private(seed, public), 0o600)
    atomic_write_bytes(keys.host_public,
                       openssh_public_line(host.public_key(), comment).encode(), 0o644)
    atomic_write_bytes(keys.client_public, client.export_public_key("openssh"), 0o644)
    atomic_write_bytes(keys.client_key, client.export_private_key("openssh"), 0o600)
    return keys


def host_public_key(keys: MachineKeys) -> str:
    """The guest's host key as an OpenSSH public line (`ssh-ed25519 AAAA… comment`)."""
    return keys.host_public.read_text().strip()


def host_key_fingerprint(keys: MachineKeys) -> str:
    """`SHA256:…` fingerprint of the guest's host key, as `ssh` prints it."""
    import asyncssh  # deferred: see `create_machine_keys`

    fingerprint: str = asyncssh.import_public_key(host_public_key(keys)).get_fingerprint()
    return fingerprint


def known_hosts_line(keys: MachineKeys, port: int, host: str = "127.0.0.1") -> str:
    """A known_hosts entry for the guest as reached through the host port forward."""
    key_type, key_b64 = host_public_key(keys).split()[:2]
    target = host if port == 22 else f"[{host}]:{port}"
    return f"{target} {key_type} {key_b64}\n"


def client_private_key(keys: MachineKeys) -> asyncssh.SSHKey:
    """The client key, loaded for `asyncssh.connect(client_keys=[...])`."""
    import asyncssh  # deferred: see `create_machine_keys`

    return asyncssh.read_private_key(keys.client_key)


def env_file_text(env: dict[str, str]) -> str:
    """`export KEY='value'` lines for /etc/boxui/env, sourced by whatever the guest runs
    for a service (values are shell-quoted: they are data, never code)."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))


def seed_archive(keys: MachineKeys, random_seed: bytes | None = None,
                 env: dict[str, str] | None = None, extra: list[Entry] | None = None) -> bytes:
    """The uncompressed newc archive with this machine's keys, a fresh RNG seed and, for
    a service instance, the service's environment in /etc/boxui/env; `extra`: files of
    its own (its shared folders' modules and mount script)."""
    entropy = os.urandom(RANDOM_SEED_BYTES) if random_seed is None else random_seed
    directory, regular = stat.S_IFDIR, stat.S_IFREG
    entries = [
        Entry("root", directory | 0o700),
        Entry("root/.ssh", directory | 0o700),
        Entry(GUEST_AUTHORIZED_KEYS, regular | 0o600, keys.client_public.read_bytes()),
        Entry("etc", directory | 0o755),
        Entry("etc/dropbear", directory | 0o755),
        Entry(GUEST_HOST_KEY, regular | 0o600, keys.host_key.read_bytes()),
        Entry("etc/boxui", directory | 0o755),
        Entry(GUEST_RANDOM_SEED, regular | 0o600, entropy),
    ]
    if env:
        entries.append(Entry(GUEST_ENV_FILE, regular | 0o600, env_file_text(env).encode()))
    return write_archive(entries + (extra or []))


def concatenate_initrd(base: bytes, seed: bytes) -> bytes:
    """`base` zero-padded to a 512-byte boundary, then `seed` (see module docstring)."""
    return base + b"\0" * (-len(base) % _ALIGN) + seed


def write_machine_initrd(base: GuestImage, machine_dir: Path, keys: MachineKeys,
                         env: dict[str, str] | None = None,
                         extra: list[Entry] | None = None) -> Path:
    """Write `machine_dir/initrd.img` = base initrd + this machine's seed archive.

    Call it before every cold boot: the RNG seed in it is new each time. Once the guest
    is ready the supervisor releases it (`release_boot_initrd`).
    """
    target = machine_dir / MACHINE_INITRD_FILE
    data = concatenate_initrd(base.initrd.read_bytes(), seed_archive(keys, env=env, extra=extra))
    atomic_write_bytes(target, data, 0o600)
    return target


def release_boot_initrd(initrd: Path) -> None:
    """Empty and remove an initrd written for one boot, once its guest is ready.

    By then the guest has unpacked it, and it was the only copy on disk of that boot's
    RNG seed. QEMU keeps the file mapped for a reset that `-no-reboot` turns into an
    exit, so its pages would stay resident and counted against the machine (~3 MiB):
    truncating gives them back, which unlinking alone would not while it is mapped.
    Never an error: the guest is ready whether or not this could be done.
    """
    with contextlib.suppress(OSError):
        os.truncate(initrd, 0)
    with contextlib.suppress(OSError):
        initrd.unlink()
