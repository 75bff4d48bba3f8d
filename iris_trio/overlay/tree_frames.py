"""Tree frames (kinds 21-24)."""

from __future__ import annotations

import dataclasses

from ..wire.fields import Blob, UInt
from ..wire.frames import Frame, frame_kind

__all__ = ["TreeHeartbeat", "TreeJoin", "TreePrune", "TreePublish"]


@frame_kind(21, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeJoin(Frame):
    """Routed towards a tree's id: every hop adopts the previous one as a child."""

    tree: bytes


@frame_kind(22, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreeHeartbeat(Frame):
    """Child to parent, periodically: "I am still your child"."""

    tree: bytes


@frame_kind(23, Blob(exact=16))
@dataclasses.dataclass(frozen=True, slots=True)
class TreePrune(Frame):
    """Child to parent: "forget me" (I have no members or children left)."""

    tree: bytes


@frame_kind(24, Blob(exact=16), Blob(exact=16), UInt(64), Blob())
@dataclasses.dataclass(frozen=True, slots=True)
class TreePublish(Frame):
    """An event for every member of a tree: routed to the root, then sent down.

    Attributes:
        tree: the tree's id.
        publisher: the publishing node's id.
        sequence: the publisher's sequence number on this tree (from 1).
        data: the event.
    """

    tree: bytes
    publisher: bytes
    sequence: int
    data: bytes
