"""Hypervisor drivers: one small async interface, a QEMU implementation, and (in tests
only) a fake built on the same interface, the way httpx pairs its transports and mocks."""
