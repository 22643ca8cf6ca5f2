"""What goes into a guest: the shared kernel and initramfs built from Debian packages
(`image_builder`, `apt`, `initramfs`, `newc`, `elf`, `kernel_image`), the files and
init script inside it (`guest_files`), each machine's own keys and RNG seed appended to
it (`machine_seed`), and the restore agent program (`restore_agent_elf`).

How QEMU is told to boot it lives in `backend.drivers.qemu`.
Import the submodules themselves: re-exporting them here would load all of them (SSH
crypto included) into every supervisor and CLI start, which re-adoption waits on.
"""
