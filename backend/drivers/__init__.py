"""Hypervisor drivers: one small async interface (`base`), the QEMU implementation
(`qemu`), and a stand-in (`standin`) built on the same interface that runs plain
processes instead of VMs, for tests and `boxui demo` only -- the way httpx keeps its
`MockTransport` beside its real transports."""
