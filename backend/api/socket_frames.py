"""The framing the exec socket's answers share (`boxui exec` and `boxui run`): a kind
byte, a big-endian u32 length, the payload."""

from __future__ import annotations

import struct

U32 = struct.Struct(">I")
I32 = struct.Struct(">i")


class BadRequestError(Exception):
    pass


def frame(kind: bytes, payload: bytes) -> bytes:
    return kind + U32.pack(len(payload)) + payload


def exit_frame(code: int) -> bytes:
    return frame(b"x", I32.pack(code))
