"""Per-machine keys and the seed archive appended to the shared initrd."""

from __future__ import annotations

import base64
import gzip
import hashlib
import mmap
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.guest.image_builder import GuestImage
from backend.guest.machine_seed import (
    concatenate_initrd,
    create_machine_keys,
    dropbear_ed25519_private,
    host_key_fingerprint,
    host_public_key,
    known_hosts_line,
    load_machine_keys,
    openssh_public_line,
    release_boot_initrd,
    seed_archive,
    write_machine_initrd,
)
from backend.guest.newc import Entry, read_archive, write_archive


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_created_with_private_modes(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    assert mode(keys.client_key) == 0o600 and mode(keys.host_key) == 0o600
    assert mode(keys.client_public) == 0o644 and mode(keys.host_public) == 0o644
    client = asyncssh.read_private_key(keys.client_key)
    assert client.algorithm == b"ssh-ed25519"
    assert keys.client_public.read_text().startswith("ssh-ed25519 ")
    assert host_public_key(keys).startswith("ssh-ed25519 ")
    assert not list((tmp_path / "m1").glob(".*tmp*"))  # no temp files left


def test_keys_are_kept_not_regenerated(tmp_path: Path) -> None:
    first = create_machine_keys(tmp_path / "m1")
    before = first.host_key.read_bytes(), first.client_key.read_bytes()
    again = create_machine_keys(tmp_path / "m1")
    assert (again.host_key.read_bytes(), again.client_key.read_bytes()) == before
    assert load_machine_keys(tmp_path / "m1") == first


def test_incomplete_key_set_is_regenerated_whole(tmp_path: Path) -> None:
    first = create_machine_keys(tmp_path / "m1")
    old_host = first.host_key.read_bytes()
    first.client_key.unlink()
    second = create_machine_keys(tmp_path / "m1")
    assert second.client_key.is_file() and second.host_key.read_bytes() != old_host


def test_machines_get_different_identities(tmp_path: Path) -> None:
    a, b = create_machine_keys(tmp_path / "a"), create_machine_keys(tmp_path / "b")
    assert host_public_key(a) != host_public_key(b)
    assert a.client_public.read_bytes() != b.client_public.read_bytes()


def test_dropbear_key_layout() -> None:
    blob = dropbear_ed25519_private(b"S" * 32, b"P" * 32)
    assert blob == b"\0\0\0\x0bssh-ed25519\0\0\0\x40" + b"S" * 32 + b"P" * 32
    with pytest.raises(ValueError):
        dropbear_ed25519_private(b"S" * 31, b"P" * 32)


@pytest.mark.skipif(shutil.which("dropbearkey") is None, reason="dropbear-bin not installed")
def test_dropbear_reads_our_host_key_and_agrees_on_public_half(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    out = subprocess.run(
        ["dropbearkey", "-y", "-f", str(keys.host_key)], capture_output=True, check=True
    ).stdout.decode()
    line = next(line for line in out.splitlines() if line.startswith("ssh-ed25519 "))
    assert line.split()[1] == host_public_key(keys).split()[1]
    assert f"Fingerprint: {host_key_fingerprint(keys)}" in out


def test_known_hosts_line_is_accepted_by_asyncssh(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    line = known_hosts_line(keys, 40022)
    assert line.startswith("[127.0.0.1]:40022 ssh-ed25519 ")
    known = asyncssh.import_known_hosts(line)
    host_key = asyncssh.import_public_key(host_public_key(keys))
    trusted = known.match("127.0.0.1", "127.0.0.1", 40022)[0]
    assert {k.public_data for k in trusted} == {host_key.public_data}
    assert known_hosts_line(keys, 22).startswith("127.0.0.1 ssh-ed25519 ")


def test_seed_archive_entries_and_modes(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    entries = {e.name: e for e in read_archive(seed_archive(keys, b"r" * 512))}
    expected = {
        "root": stat.S_IFDIR | 0o700,
        "root/.ssh": stat.S_IFDIR | 0o700,
        "root/.ssh/authorized_keys": stat.S_IFREG | 0o600,
        "etc": stat.S_IFDIR | 0o755,
        "etc/dropbear": stat.S_IFDIR | 0o755,
        "etc/dropbear/dropbear_ed25519_host_key": stat.S_IFREG | 0o600,
        "etc/boxui": stat.S_IFDIR | 0o755,
        "etc/boxui/random-seed": stat.S_IFREG | 0o600,
    }
    assert {name: e.mode for name, e in entries.items()} == expected
    assert all(e.uid == 0 and e.gid == 0 for e in entries.values())
    assert entries["root/.ssh/authorized_keys"].data == keys.client_public.read_bytes()
    assert entries["etc/dropbear/dropbear_ed25519_host_key"].data == keys.host_key.read_bytes()
    assert entries["etc/boxui/random-seed"].data == b"r" * 512
    names = list(entries)  # parents come before children
    assert names.index("root") < names.index("root/.ssh") < names.index("root/.ssh/authorized_keys")


def test_random_seed_differs_per_archive(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")

    def seed() -> bytes:
        return {e.name: e for e in read_archive(seed_archive(keys))}["etc/boxui/random-seed"].data

    assert seed() != seed()


@pytest.mark.parametrize("base_len", [1, 3, 4, 511, 512, 513])
def test_concatenation_pads_base_to_alignment(base_len: int) -> None:
    seed = write_archive([Entry("x", stat.S_IFREG | 0o600, b"1")])
    joined = concatenate_initrd(b"B" * base_len, seed)
    start = len(joined) - len(seed)
    assert start % 512 == 0 and joined[start:] == seed
    assert joined[:base_len] == b"B" * base_len and set(joined[base_len:start]) <= {0}


def test_machine_initrd_is_base_plus_seed(tmp_path: Path) -> None:
    base_bytes = gzip.compress(write_archive([Entry("init", stat.S_IFREG | 0o755, b"#!")]))
    (tmp_path / "initrd.img").write_bytes(base_bytes)
    base = GuestImage(kernel=tmp_path / "k", initrd=tmp_path / "initrd.img",
                      content_hash="0" * 64, cache_hit=True, kernel_version="v")  # fmt: skip
    machine_dir = tmp_path / "m1"
    keys = create_machine_keys(machine_dir)
    path = write_machine_initrd(base, machine_dir, keys)
    data = path.read_bytes()
    assert mode(path) == 0o600 and data.startswith(base_bytes)
    # gzip tolerates the zero padding, so the base still decompresses on its own
    assert read_archive(gzip.decompress(data[: len(base_bytes)]))[0].name == "init"
    seed_start = len(base_bytes) + (-len(base_bytes) % 512)
    names = [e.name for e in read_archive(data[seed_start:])]
    assert "root/.ssh/authorized_keys" in names


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_sees_seed_modes(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    listing = subprocess.run(
        ["cpio", "-t", "-v", "--quiet"], input=seed_archive(keys), capture_output=True, check=True
    ).stdout.decode()
    perms = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
    assert perms["root/.ssh"] == "drwx------"
    assert perms["root/.ssh/authorized_keys"] == "-rw-------"
    assert perms["etc/dropbear/dropbear_ed25519_host_key"] == "-rw-------"


def test_service_env_is_seeded_as_quoted_export_lines(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    entries = {e.name: e for e in read_archive(seed_archive(keys, env={
        "MODE": "prod", "GREETING": "it's $HOME; `x`"}))}
    env = entries["etc/boxui/env"]
    assert stat.S_IMODE(env.mode) == 0o600
    text = env.data.decode()
    assert text == "export GREETING='it'\"'\"'s $HOME; `x`'\nexport MODE=prod\n"
    out = subprocess.run(["sh", "-c", f"{text}printf %s \"$GREETING\""], capture_output=True,
                         text=True, check=True)
    assert out.stdout == "it's $HOME; `x`"
    assert "etc/boxui/env" not in {e.name for e in read_archive(seed_archive(keys))}


def _wire_format_line(public: bytes, comment: str) -> str:
    """The OpenSSH line built from its definition: base64 of string "ssh-ed25519" and
    string <32-byte key>, each a 4-byte big-endian length and the bytes."""
    blob = b"".join(struct.pack(">I", len(part)) + part for part in (b"ssh-ed25519", public))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}\n"


def test_openssh_public_line_is_the_wire_format() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert openssh_public_line(key, "boxui@m1") == _wire_format_line(raw, "boxui@m1")


def test_host_key_files_are_byte_for_byte_the_old_format(tmp_path: Path) -> None:
    keys = create_machine_keys(tmp_path / "m1")
    public = keys.host_key.read_bytes()[-32:]  # dropbear's string holds seed || public
    assert keys.host_public.read_text() == _wire_format_line(public, "boxui@m1")
    blob = base64.b64decode(host_public_key(keys).split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert host_key_fingerprint(keys) == f"SHA256:{digest}"


def test_key_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        keys = create_machine_keys(tmp_path / "m1")
    finally:
        os.umask(old)
    assert mode(keys.client_public) == 0o644 and mode(keys.host_public) == 0o644
    assert mode(keys.client_key) == 0o600 and mode(keys.host_key) == 0o600


def resident_kib(path_end: str, pid: int | str = "self") -> int:
    """RSS of process `pid`'s mappings of a file whose path ends with `path_end`
    (/proc/PID/smaps), 0 if none is mapped."""
    resident, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        words = line.split()
        if len(words) >= 5 and not words[0].endswith(":"):
            inside = len(words) >= 6 and words[5].endswith(path_end)
        elif inside and words[0] == "Rss:":
            resident += int(words[1])
    return resident


def test_releasing_a_boots_initrd_gives_back_its_mapped_pages(tmp_path: Path) -> None:
    # as QEMU holds it: mapped private and read-only, every page read once
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(os.urandom(1 << 20))
    with initrd.open("rb") as file:
        view = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE)
    try:
        assert hashlib.sha256(view[:]).digest()  # reads it all in
        assert resident_kib(str(initrd)) >= 1000
        release_boot_initrd(initrd)
        assert not initrd.exists()
        # unlinked alone it would stay resident while mapped; emptied, nothing is
        assert resident_kib(str(initrd)) == 0
        release_boot_initrd(initrd)  # gone already: nothing to do
    finally:
        view.close()
