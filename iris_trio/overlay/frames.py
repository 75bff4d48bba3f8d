"""Overlay frames (kinds 16-31)."""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, Boolean, Record, Sequence, Text, UInt
from ..wire.frames import Frame, frame_kind

__all__ = ["Heartbeat", "Leave", "NodeRef", "OverlayState", "Route", "RouteAck"]

#: A node as carried in frames: (16-byte id, "host:port" address).
NodeRef = tuple[bytes, str]
_NODE = Record(Blob(exact=16), Text(256))


@frame_kind(16, Sequence(_NODE, 64), Sequence(_NODE, 512), Boolean())
@dataclasses.dataclass(frozen=True, slots=True)
class OverlayState(Frame):
    """A node's leaf set and routing table entries (with addresses).

    Attributes:
        leaves: leaf set members, the sender included first.
        table: routing table entries.
        reply: the receiver should answer with its own state.
    """

    leaves: tuple[NodeRef, ...]
    table: tuple[NodeRef, ...]
    reply: bool


#: Acknowledgements one frame carries at most.
MAX_ACKS = 256


@frame_kind(
    17,
    Blob(exact=16),
    Blob(exact=16),
    Blob(exact=16),
    UInt(8),
    Blob(),
    Sequence(Blob(exact=16), MAX_ACKS),
)
@dataclasses.dataclass(frozen=True, slots=True)
class Route(Frame):
    """A message routed hop by hop to the live node closest to ``key``.

    Attributes:
        message_id: random id, for acknowledgement and duplicate suppression.
        key: the destination key.
        origin: the id of the node that first sent it.
        hops: links traversed so far.
        payload: an upper-layer frame, encoded.
        acks: hops of earlier Routes from the receiver that this sender
            acknowledges (riding along instead of a frame of their own).
    """

    message_id: bytes
    key: bytes
    origin: bytes
    hops: int
    payload: bytes
    acks: tuple[bytes, ...] = ()


@frame_kind(18, Sequence(Blob(exact=16), MAX_ACKS))
@dataclasses.dataclass(frozen=True, slots=True)
class RouteAck(Frame):
    """Acknowledges hops of :class:`Route` messages (by message id)."""

    message_ids: tuple[bytes, ...]


@frame_kind(19)
@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat(Frame):
    """Liveness signal on an otherwise idle overlay connection."""


@frame_kind(20)
@dataclasses.dataclass(frozen=True, slots=True)
class Leave(Frame):
    """The sender leaves the overlay gracefully: forget it at once."""
