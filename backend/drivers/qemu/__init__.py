"""The QEMU driver: `driver` (start, adopt, stop, snapshot), `cmdline` (the argv, as a
list), `accel` (KVM only where it really works, else TCG), `qmp_ops` (QMP commands) and
`readiness` (waiting for the guest's ready line on its console).

Import the submodules themselves: re-exporting them here would load QMP and SSH code
into every CLI start.
"""
