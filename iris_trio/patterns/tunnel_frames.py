"""Tunnel frames (kinds 64-67), sent on the direct link between the two ends."""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, Optional, Text, UInt
from ..wire.frames import Frame, frame_kind

__all__ = ["CHUNK_SIZE", "TunnelAllow", "TunnelClose", "TunnelData", "TunnelInit"]

#: Largest piece of a message in one TunnelData frame.
CHUNK_SIZE = 64 * 1024


@frame_kind(64, Blob(exact=16), Blob(exact=16), UInt(64))
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelInit(Frame):
    """Member to requester: "I take the tunnel you asked for as ``tunnel``; I call
    it ``member_tunnel``, and you may send me ``allowance`` bytes"."""

    tunnel: bytes
    member_tunnel: bytes
    allowance: int


@frame_kind(65, Blob(exact=16), UInt(64))
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelAllow(Frame):
    """The receiver has room for ``allowance`` more bytes (an increment)."""

    tunnel: bytes
    allowance: int


@frame_kind(66, Blob(exact=16), UInt(64), Optional(UInt(64)), Blob(CHUNK_SIZE))
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelData(Frame):
    """A piece of a message.

    Attributes:
        tunnel: the tunnel's id.
        sequence: the frame's place in the tunnel (from 0; shared with TunnelClose).
        size: the whole message's size on its first piece, None on the others. A
            first piece while a message is incomplete discards the incomplete one.
        data: the piece.
    """

    tunnel: bytes
    sequence: int
    size: int | None
    data: bytes


@frame_kind(67, Blob(exact=16), UInt(64), Text(1024))
@dataclasses.dataclass(frozen=True, slots=True)
class TunnelClose(Frame):
    """The sender's end is closed after frame ``sequence - 1``.

    ``reason`` is empty for a clean close (the far end reads what was sent, then
    EndOfChannel) and says what went wrong otherwise (BrokenResourceError).
    """

    tunnel: bytes
    sequence: int
    reason: str
