"""Files a domain boots from, put on its libvirt host through libvirt's storage API.

A libvirt host on another machine cannot open this machine's paths, so a boxui domain's
kernel, initrd and console log must be files there. They go into a directory pool of
boxui's own (`boxui`), uploaded with a `virStream` over the connection boxui already
has: no second SSH login, no scp, and the files are volumes a virsh user can list
(`virsh vol-list boxui`). The kernel is named by its content, so a host gets it once;
a machine's initrd carries that boot's seed, so it is uploaded per machine per boot.

A content-addressed volume must never be seen half-written (the next machine would boot
from it): it is uploaded under a name of its own, then cloned by libvirtd to its real
name, so that name appears only with whole content.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid as uuidlib
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import libvirt

from backend.drivers.libvirt.host import LibvirtHost, LibvirtHostError
from backend.drivers.libvirt.loop_thread import on_libvirt

POOL = "boxui"
#: where the pool is made for a system daemon (`qemu+ssh://host/system`) that has none
SYSTEM_POOL_DIR = "/var/lib/libvirt/boxui"
#: a console log is small; a reader only needs its end
CONSOLE_TAIL = 256 * 1024
_CHUNK = 1 << 20


def _fail(what: str, exc: libvirt.libvirtError) -> LibvirtHostError:
    return LibvirtHostError(f"libvirt: {what}: {exc.get_error_message() or exc}")


def content_name(path: Path, prefix: str) -> str:
    """`prefix-<sha256>`: the same bytes get the same volume on every host."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"{prefix}-{digest.hexdigest()[:32]}"


def _pool_xml(directory: str) -> str:
    # 0711, as libvirt's own images dir: a QEMU run as another user reaches its files
    return (f"<pool type='dir'><name>{POOL}</name><target><path>{escape(directory)}"
            "</path><permissions><mode>0711</mode></permissions></target></pool>")


def _volume_xml(name: str, size: int) -> str:
    return (f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{size}</capacity>"
            "<target><format type='raw'/><permissions><mode>0600</mode></permissions>"
            "</target></volume>")


def _send(_stream: libvirt.virStream, nbytes: int, source: BinaryIO) -> bytes:
    return source.read(nbytes)


class Volumes:
    """boxui's pool on one open libvirt host; every method runs on the libvirt thread."""

    def __init__(self, host: LibvirtHost) -> None:
        self.host = host

    def _pool(self) -> libvirt.virStoragePool:
        """The pool, defined, built and started the first time a host needs it."""
        conn = self.host.conn
        try:
            pool = conn.storagePoolLookupByName(POOL)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise _fail(f"looking up storage pool {POOL}", exc) from None
            pool = self._define_pool(conn)
        try:
            if not pool.isActive():
                pool.create(0)
        except libvirt.libvirtError as exc:
            raise _fail(f"starting storage pool {POOL}", exc) from None
        return pool

    def _define_pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        if urlsplit(self.host.uri).path.rstrip("/") != "/system":
            raise LibvirtHostError(
                f"{self.host.uri} has no storage pool {POOL!r} for boxui's boot files; "
                f"make one (virsh pool-define-as {POOL} dir --target DIR; virsh "
                f"pool-build {POOL}; virsh pool-start {POOL})")
        try:
            pool = conn.storagePoolDefineXML(_pool_xml(SYSTEM_POOL_DIR), 0)
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):  # another boxui was first
                return conn.storagePoolLookupByName(POOL)
            raise _fail(f"defining storage pool {POOL}", exc) from None
        try:
            pool.build(0)
            pool.setAutostart(1)
        except libvirt.libvirtError as exc:
            raise _fail(f"building storage pool {POOL} in {SYSTEM_POOL_DIR}", exc) from None
        return pool

    def _lookup(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise _fail(f"looking up volume {name}", exc) from None

    def _upload(self, pool: libvirt.virStoragePool, name: str,
                path: Path) -> libvirt.virStorageVol:
        """`path`'s bytes as volume `name` (replacing one there); taken back on failure."""
        old = self._lookup(pool, name)
        try:
            if old is not None:
                old.delete(0)
            size = path.stat().st_size
            vol = pool.createXML(_volume_xml(name, size), 0)
        except libvirt.libvirtError as exc:
            raise _fail(f"making volume {name}", exc) from None
        stream = self.host.conn.newStream(0)
        try:
            with path.open("rb") as source:
                vol.upload(stream, 0, size, 0)
                stream.sendAll(_send, source)
            stream.finish()
        except BaseException as exc:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            if isinstance(exc, libvirt.libvirtError):
                raise _fail(f"uploading {path.name} as {name}", exc) from None
            raise
        return vol

    async def put(self, path: Path, name: str) -> str:
        """Upload `path` as volume `name`; the path the libvirt host knows it by."""
        def run() -> str:
            return str(self._upload(self._pool(), name, path).path())

        return await on_libvirt(run)

    async def put_once(self, path: Path, name: str) -> str:
        """Volume `name` (content-addressed), uploaded only if the host lacks it."""
        def run() -> str:
            pool = self._pool()
            there = self._lookup(pool, name)
            if there is not None:
                return str(there.path())
            part = self._upload(pool, f"{name}.part-{uuidlib.uuid4().hex[:8]}", path)
            try:
                size = path.stat().st_size
                return str(pool.createXMLFrom(_volume_xml(name, size), part, 0).path())
            except libvirt.libvirtError as exc:
                there = self._lookup(pool, name)  # another boxui made it meanwhile
                if there is None:
                    raise _fail(f"making volume {name}", exc) from None
                return str(there.path())
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    part.delete(0)

        return await on_libvirt(run)

    def _existing_pool(self) -> libvirt.virStoragePool | None:
        """The pool, refreshed, if the host has it running (reading defines nothing)."""
        try:
            pool = self.host.conn.storagePoolLookupByName(POOL)
            if not pool.isActive():
                return None
            pool.refresh(0)  # finds files libvirtd did not make (a console log virtlogd
            return pool      # wrote) and their sizes now
        except libvirt.libvirtError:
            return None

    async def remove(self, *names: str) -> None:
        """Delete these volumes where they exist."""
        def run() -> None:
            pool = self._existing_pool()
            for name in names if pool is not None else ():
                vol = self._lookup(pool, name)
                if vol is not None:
                    try:
                        vol.delete(0)
                    except libvirt.libvirtError as exc:
                        raise _fail(f"deleting volume {name}", exc) from None

        await on_libvirt(run)

    async def tail(self, path: str, limit: int = CONSOLE_TAIL) -> bytes | None:
        """The end of the file at `path` on the libvirt host, if it is a volume of the
        pool; None when there is none (yet)."""
        def run() -> bytes | None:
            if self._existing_pool() is None:
                return None
            try:
                vol = self.host.conn.storageVolLookupByPath(path)
                size = vol.info()[1]  # [type, capacity, allocation]
            except libvirt.libvirtError:
                return None
            offset = max(0, size - limit)
            stream = self.host.conn.newStream(0)
            chunks: list[bytes] = []
            try:
                vol.download(stream, offset, size - offset, 0)
                stream.recvAll(lambda _s, data, out: out.append(data), chunks)
                stream.finish()
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                return None
            return b"".join(chunks)

        return await on_libvirt(run)
