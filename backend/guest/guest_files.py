"""The text files of the guest's userland: init, inittab, hooks, passwd.

They live in one place because their exact text is part of the image cache key: change
a line here and the next build produces a new image instead of reusing a stale one.

Boot flow: the kernel runs `/init` (a shell script) which mounts, loads modules, sets
up the network and then `exec`s busybox `init`. busybox init stays PID 1 because it is
what turns `poweroff` (SIGUSR2) into "stop services, kill, sync, power off"; a shell
as PID 1 would ignore that. inittab respawns dropbear and acpid and runs the readiness
hook once.
"""

from __future__ import annotations

#: Marker printed on the serial console once sshd listens: "BOXUI-READY <boot_id>".
READY_MARKER = "BOXUI-READY"
#: Printed instead when the guest knows it will never become ready.
FAILED_MARKER = "BOXUI-FAILED"

#: Paths inside the guest that the per-machine seed archive fills in.
GUEST_AUTHORIZED_KEYS = "root/.ssh/authorized_keys"
GUEST_HOST_KEY = "etc/dropbear/dropbear_ed25519_host_key"
GUEST_RANDOM_SEED = "etc/boxui/random-seed"
#: a service instance's environment (export lines), from the seed archive
GUEST_ENV_FILE = "etc/boxui/env"

GUEST_MODULE_DIR = "lib/boxui-modules"

#: Kernel modules in dependency order (checked against each .ko's `depends=` at build).
#: virtio_mmio is the transport of every device on `-M microvm`; button + evdev turn the
#: ACPI power button (QMP `system_powerdown`) into an input event busybox acpid reads.
#: virtio_pci (a module in Debian's kernel) is the transport on a PCI machine type, which a
#: libvirt host needs (libvirt refuses microvm); on microvm it finds no PCI bus and idles.
MODULES: tuple[tuple[str, str], ...] = (
    ("virtio_ring", "drivers/virtio/virtio_ring.ko"),
    ("virtio", "drivers/virtio/virtio.ko"),
    ("virtio_mmio", "drivers/virtio/virtio_mmio.ko"),
    ("virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_legacy_dev.ko"),
    ("virtio_pci_modern_dev", "drivers/virtio/virtio_pci_modern_dev.ko"),
    ("virtio_pci", "drivers/virtio/virtio_pci.ko"),
    ("failover", "net/core/failover.ko"),
    ("net_failover", "drivers/net/net_failover.ko"),
    ("virtio_net", "drivers/net/virtio_net.ko"),
    ("virtio_console", "drivers/char/virtio_console.ko"),
    ("virtio_balloon", "drivers/virtio/virtio_balloon.ko"),
    ("virtio-rng", "drivers/char/hw_random/virtio-rng.ko"),
    ("button", "drivers/acpi/button.ko"),
    ("evdev", "drivers/input/evdev.ko"),
)


def _insmods(modules: tuple[tuple[str, str], ...]) -> str:
    return "\n".join(
        f'insmod /{GUEST_MODULE_DIR}/{name}.ko || echo "boxui: insmod {name} failed"'
        for name, _ in modules
    )


#: Free page reporting (a balloon feature QEMU turns on for cold-booted TCG guests,
#: `cmdline.free_page_reporting`) by single pages: the default reports only free 4 MiB
#: blocks, and what a boot frees (the initrd's copy, __init sections) never forms one.
#: Set here, after the balloon driver is up, because Linux 6.1 resets the order when the
#: driver registers (the command line's `page_reporting.page_reporting_order` is lost).
_REPORT_PAGES = """order=/sys/module/page_reporting/parameters/page_reporting_order
if [ -w "$order" ]; then echo 0 > "$order"; fi"""


def init_script(modules: tuple[tuple[str, str], ...]) -> str:
    """/init, loading `modules` (none for boxui's own kernel, which has them built in)."""
    return f"""#!/bin/sh
# boxui guest /init: PID 1 until it execs busybox init.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
{_insmods(modules)}
{_REPORT_PAGES}
name=boxui
boot_id=unknown
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    boxui.name=*) name="${{arg#boxui.name=}}" ;;
    boxui.boot_id=*) boot_id="${{arg#boxui.boot_id=}}" ;;
  esac
done
hostname "$name"
echo "$name" > /etc/hostname
echo "127.0.1.1 $name" >> /etc/hosts
echo "$boot_id" > /run/boxui-boot-id
if [ -f /{GUEST_RANDOM_SEED} ]; then
  cat /{GUEST_RANDOM_SEED} > /dev/urandom
  rm -f /{GUEST_RANDOM_SEED}
fi
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2
exec /sbin/init
"""


INIT = init_script(MODULES)
#: /init of the image's second initrd, booted with boxui's kernel (`small_kernel`)
BUILTIN_INIT = init_script(())

INITTAB = f"""::respawn:/usr/sbin/dropbear -F -E -s -p 22 -r /{GUEST_HOST_KEY}
::respawn:/sbin/acpid -f -c /etc/acpi -l /dev/null
::once:/etc/boxui/ready
::shutdown:/etc/boxui/shutdown
"""

# Ready only when something listens on port 22 (v4 or v6), so "ready" means an ssh
# connection made now will be answered; gives up after ~60 s of guest time.
READY = f"""#!/bin/sh
if [ ! -e /sys/class/net/eth0 ]; then
  echo "{FAILED_MARKER} no-eth0" > /dev/console
  exit 1
fi
i=0
while ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \\
    | awk '$2 ~ /:0016$/ && $4 == "0A" {{ f = 1 }} END {{ exit !f }}'; do
  i=$((i + 1))
  if [ "$i" -gt 3000 ]; then
    echo "{FAILED_MARKER} sshd-not-listening" > /dev/console
    exit 1
  fi
  usleep 20000
done
echo "{READY_MARKER} $(cat /run/boxui-boot-id)" > /dev/console
"""

SHUTDOWN = """#!/bin/sh
echo "BOXUI-SHUTDOWN $(cat /run/boxui-boot-id)" > /dev/console
sync
"""

# busybox acpid maps the power-button input event (KEY_POWER) to this path.
ACPI_POWER = """#!/bin/sh
exec /sbin/poweroff
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534:sshd:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"
SHELLS = "/bin/sh\n"
HOSTS = "127.0.0.1 localhost\n"
RESOLV_CONF = "nameserver 10.0.2.3\n"  # QEMU user networking's DNS forwarder
PROFILE = "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\n"

#: path inside the guest -> (mode, text)
GUEST_TEXT_FILES: dict[str, tuple[int, str]] = {
    "init": (0o755, INIT),
    "etc/inittab": (0o644, INITTAB),
    "etc/boxui/ready": (0o755, READY),
    "etc/boxui/shutdown": (0o755, SHUTDOWN),
    "etc/acpi/PWRF/00000080": (0o755, ACPI_POWER),
    "etc/passwd": (0o644, PASSWD),
    "etc/group": (0o644, GROUP),
    "etc/shells": (0o644, SHELLS),
    "etc/hosts": (0o644, HOSTS),
    "etc/resolv.conf": (0o644, RESOLV_CONF),
    "etc/profile": (0o644, PROFILE),
}


def guest_text_fingerprint(files: dict[str, tuple[int, str]] | None = None) -> str:
    """One canonical string of every generated file (path, mode, text) for the cache key."""
    chosen = GUEST_TEXT_FILES if files is None else files
    parts = [f"{path}\0{mode:o}\0{text}\0" for path, (mode, text) in sorted(chosen.items())]
    parts.append("modules\0" + ",".join(name for name, _ in MODULES))
    return "".join(parts)
