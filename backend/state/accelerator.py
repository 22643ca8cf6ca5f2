"""The accelerator a machine runs under, as one type from `machine.toml` to `-accel`.

It lives at the bottom of the layers because the spec and the runtime record (here in
`state`) name it as much as accel detection and the drivers above do.
"""

from __future__ import annotations

from typing import Literal, get_args

#: What a machine runs under: KVM, or TCG (QEMU's software emulation). "demo" is no
#: accelerator at all: the stand-in processes `boxui demo` runs say so rather than claim
#: KVM or TCG. Only the stand-in driver accepts it; QEMU refuses it.
Accel = Literal["kvm", "tcg", "demo"]

#: What a user may ask for (`machine.toml`, `--accel`): "auto" detects; never "demo".
AccelRequest = Literal["auto", "kvm", "tcg"]

ACCEL_REQUESTS: tuple[AccelRequest, ...] = get_args(AccelRequest)

#: What a template revision records it was built under: a snapshot's accelerator, or
#: "" for an image build, which boots nothing (the empty string keeps cache keys and
#: `revision.json` as they were).
BuildAccel = Accel | Literal[""]
