"""Guest side of boxui: what a microVM boots and how QEMU is told to boot it.

- `accel`: KVM only where it really works, else TCG (plus the host TSC rate TCG needs).
- `image_builder`: one shared kernel + initramfs, built from Debian packages, cached by
  content hash.
- `machine_seed`: per-machine SSH keys and RNG seed, appended to the shared initrd.
- `qemu_cmdline`: the QEMU argv, as a list.
- `readiness`, `qmp_ops`: waiting for "ready" on the console; balloon stats, powerdown.

Nothing here imports the rest of `backend/`, so it can be tested and benchmarked alone.
"""

from backend.guest.accel import AccelChoice, detect_accel, host_tsc_khz, resolve_accel
from backend.guest.errors import GuestImageError
from backend.guest.image_builder import (
    GuestImage,
    build_default_image,
    compute_content_hash,
    load_current_image,
)
from backend.guest.machine_seed import (
    MachineKeys,
    create_machine_keys,
    host_key_fingerprint,
    host_public_key,
    known_hosts_line,
    load_machine_keys,
    write_machine_initrd,
)
from backend.guest.qemu_cmdline import BALLOON_QOM_PATH, QemuConfig, build_argv, find_qemu
from backend.guest.readiness import wait_for_ready

__all__ = [
    "BALLOON_QOM_PATH",
    "AccelChoice",
    "GuestImage",
    "GuestImageError",
    "MachineKeys",
    "QemuConfig",
    "build_argv",
    "build_default_image",
    "compute_content_hash",
    "create_machine_keys",
    "detect_accel",
    "find_qemu",
    "host_key_fingerprint",
    "host_public_key",
    "host_tsc_khz",
    "known_hosts_line",
    "load_current_image",
    "load_machine_keys",
    "resolve_accel",
    "wait_for_ready",
    "write_machine_initrd",
]
