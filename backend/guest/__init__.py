"""Guest side of boxui: what a microVM boots and how QEMU is told to boot it.

- `accel`: KVM only where it really works, else TCG (plus the host TSC rate TCG needs).
- `image_builder`: one shared kernel + initramfs, built from Debian packages, cached by
  content hash.
- `machine_seed`: per-machine SSH keys and RNG seed, appended to the shared initrd.
- `qemu_cmdline`: the QEMU argv, as a list.
- `readiness`, `qmp_ops`: waiting for "ready" on the console; balloon stats, powerdown.

Nothing here imports the rest of `backend/`, so it can be tested and benchmarked alone.
Import the submodules themselves: re-exporting them here would load all of them (SSH
crypto included) into every supervisor and CLI start, which re-adoption waits on.
"""
