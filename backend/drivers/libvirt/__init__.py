"""libvirt hosts: the domains of a libvirt daemon (local or `qemu+ssh://`) shown and run as
boxui machines. `host.LibvirtHost` is the one class a host registry calls; the pure parts
(state mapping, domain XML) import nothing of libvirt, so they test without it."""
